"""Sweeps on a Ray cluster (``prunekit sweep --backend ray [--address auto|HOST:PORT]``).

The driver (the ``prunekit sweep`` process) claims each run in the results database and submits it
as a Ray task with its resources (one CPU; one GPU as well when the sweep's device is CUDA). A task
trains the run exactly as ``prunekit run`` would, writing its masks and checkpoints to
``<out>/runs/<key>/``, and returns its result row and per-epoch metrics: the driver is the only
writer of the SQLite database (SQLite on a network file system is not safe for concurrent writers).

* ``--out`` must be storage every node sees (NFS, a cluster file system): the driver writes a marker
  file there and a task on a node that cannot read it fails at once with an error saying so.
* A task whose worker process dies (a node lost, OOM, ``kill -9``) is retried by Ray and resumes from
  the run's last checkpoint; the run is recorded once.
* Without an address a local Ray instance is started (and stopped at the end), so the same command
  works on a laptop and on a cluster (``ray start --head`` there, then ``--address auto``).

Ray is an optional dependency: ``pip install prunekit[ray]``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError, DataError
from ...training import Callback
from ..kinds import DatasetCache, Run, RunContext
from ..lifecycle import EnvironmentFailure
from ..record import Store, Trained, result_fields
from ..spec import from_config

RETRIES = 3  # worker deaths retried by Ray per run
_WORKER_DATASETS: dict[str | None, Any] = {}  # per worker process: Ray reuses workers, so data loads once per worker


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'prunekit[ray]' (or pip install ray)") from None
    return ray


def check_address(address: str | None, timeout: float = 10.0) -> None:
    """A ``HOST:PORT`` cluster address must accept a connection (within ``timeout`` seconds), so that
    an unreachable cluster is one error before anything is written, not endless retries.

    Raises:
        ConfigError: the address is malformed or nothing answers there.
    """
    if address in (None, "auto"):
        return
    assert address is not None
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address must be auto or HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({reason} within {timeout:g} s); start it there "
                          "(ray start --head) or leave --address out to start a local Ray instance") from None


class _Collect(Callback):
    """Per-epoch metrics of a run (of an IMP run's rounds: phase the round), kept for the driver."""

    def __init__(self, rows: list[tuple[int, dict[str, Any]]], phase: int):
        self.rows, self.phase = rows, phase

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        self.rows.append((self.phase, dict(metrics)))


def train_on_worker(config: dict[str, Any], out_dir: str, data_dir: str | None, marker: str, device_name: str, threads: int) -> dict[str, Any]:
    """What a Ray task runs: one run, trained where Ray placed it; returns its row for the driver."""
    begin = time.perf_counter()
    out = Path(out_dir)
    host = socket.gethostname()
    if not (out / marker).is_file():
        raise DataError(
            f"--out {out_dir} is not the driver's folder as seen from node {host}: a Ray sweep needs --out on storage "
            "every node sees (NFS or a cluster file system), at the same path"
        )
    torch.set_num_threads(max(1, threads))
    run = from_config(config)
    run_dir = out / "runs" / run.key
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "worker.json").write_text(json.dumps({"host": host, "pid": os.getpid()}))
    checkpoint = run_dir / "checkpoint.pt"
    resumed = None
    if checkpoint.is_file():
        try:
            resumed = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"])
        except Exception:  # an unreadable checkpoint is dealt with (and reported) by the training itself
            resumed = None
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device_name == "auto" else device_name)
    datasets = _WORKER_DATASETS.setdefault(data_dir, DatasetCache(data_dir))
    datasets.get(run.dataset)
    loaded = time.perf_counter()
    epochs: list[tuple[int, dict[str, Any]]] = []
    done = run.execute(RunContext(run_dir, datasets, device, epoch_callbacks=lambda phase: [_Collect(epochs, phase)], progress=False))
    done.extra["ray"] = {
        "host": host, "pid": os.getpid(), "resumed_from_epoch": resumed,
        "data_seconds": loaded - begin, "task_seconds": time.perf_counter() - begin,
    }
    if not any(phase for phase, _ in epochs):  # one phase: its whole history (a retried task trained only the epochs after the checkpoint)
        epochs = [(0, dict(h)) for h in done.result.history]
    return {"results": result_fields(done, run_dir, datasets.get(run.dataset), device), "epochs": epochs}


class RayBackend:
    """Every claimed run a Ray task; the driver (this process) is the only writer of the database.

    Args:
        address: the Ray cluster (``"auto"``, ``"HOST:PORT"``); None starts a local Ray instance.
    """

    def __init__(self, data_dir: str | None, device: torch.device, address: str | None = None):
        self.data_dir, self.device, self.address = data_dir, device, address

    def units(self, runs: Sequence[Run]) -> Iterable[Sequence[Run]]:
        return [list(runs)]  # claimed together, trained as concurrent tasks

    def train(self, runs: Sequence[Run], store: Store) -> Iterator[tuple[Run, Trained | BaseException]]:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        out_dir = store.out_dir
        marker = f".prunekit-ray-{secrets.token_hex(6)}"
        (out_dir / marker).write_text(socket.gethostname())
        gpu = self.device.type == "cuda"
        task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=RETRIES, retry_exceptions=False)(train_on_worker)
        pending: dict[Any, Run] = {}
        try:
            for run in runs:
                pending[task.remote(run.config, str(out_dir.resolve()), self.data_dir, marker, "cuda" if gpu else "cpu", 1)] = run
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                run = pending.pop(ready[0])
                try:
                    payload = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:  # the run itself failed: recorded, the sweep goes on
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                    yield run, cause
                    continue
                except ray.exceptions.RayError as exc:  # workers died more often than Ray retries
                    yield run, EnvironmentFailure(f"{type(exc).__name__}: {exc}")
                    continue
                yield run, Trained(payload["results"], [(phase, metrics) for phase, metrics in payload["epochs"]])
        finally:  # interrupted: the unfinished tasks are cancelled (the lifecycle releases their runs)
            for ref in pending:
                ray.cancel(ref, force=True)
            (out_dir / marker).unlink(missing_ok=True)
            if started:
                ray.shutdown()
