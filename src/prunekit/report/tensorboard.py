"""The results database as TensorBoard event files: every run's per-epoch metrics, one folder per run.

``prunekit report --tensorboard`` writes ``<out>/tensorboard/<model>-<method>-<sparsity>-seed<seed>-<key>/``
(IMP rounds under ``round<r>/`` tags), then ``tensorboard --logdir <out>/tensorboard``. It reads the
same ``epochs`` table as every report, so single, stacked, IMP and structured runs all appear, also
runs still training (export again to update: each run's folder is rewritten). Needs ``tensorboard``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..experiments.db import ResultsDB, RunRecord


def run_label(row: RunRecord) -> str:
    """A readable, unique folder name for a run."""
    parts = [row.model, row.method, f"{float(row.sparsity or 0.0):g}", f"seed{row.seed}", row.key]
    return "-".join(str(p) for p in parts if p is not None)


def export_tensorboard(out_dir: str | Path, **filters: Any) -> Path:
    """Write every run's per-epoch metrics from ``<out_dir>/results.db`` as TensorBoard events.

    Returns:
        The folder written (``<out_dir>/tensorboard``).

    Raises:
        ConfigError: no results database, or the ``tensorboard`` package is missing.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("TensorBoard export needs TensorBoard: pip install 'prunekit[logging]' (or tensorboard)") from None
    out_dir = Path(out_dir)
    db_path = out_dir / "results.db"
    if not db_path.is_file():
        raise ConfigError(f"no results database at {db_path}; run prunekit run/sweep with --out {out_dir} first")
    root = out_dir / "tensorboard"
    with ResultsDB(db_path) as db:
        for row in db.runs(**filters):
            epochs = db.epochs(row.key)
            if not epochs:
                continue
            folder = root / run_label(row)
            if folder.exists():
                shutil.rmtree(folder)
            writer = SummaryWriter(str(folder))
            rounds = {e["phase"] for e in epochs}
            for e in epochs:
                prefix = f"round{e['phase']}/" if len(rounds) > 1 else ""
                step = int(e.get("epoch", 0))
                for name, value in e.items():
                    if name in ("phase", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                        continue
                    writer.add_scalar(prefix + name, float(value), global_step=step)
            writer.close()
    return root
