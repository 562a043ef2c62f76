"""The score network of AutoSparse: ``f(theta0, g0) -> predicted survival``, its training and its file.

Networks (``shared/methods.md`` §8): the paper's plain MLP ``2 -> 16 -> 64 -> 1024 -> 1024 -> 64 -> 1``
with BatchNorm and ReLU (``"mlp"``, the default), and the variant that lifts the two features to a
``3 x 32 x 32`` "image" (``2 -> 64 -> 3072``) and reads it with a ResNet-20 (``"resnet"``; the official
code uses a ResNet-18 there). Training: MSE, Adam (lr 0.01), batches of 1024, on features
standardised with the teaching set's mean and standard deviation; 10 % of the *weights* are held out
(a random split of weights, never a slice of the training tensor: the official code's "test" split is
the first 10 % of its training tensor, a leak) and the epoch with the lowest held-out loss is kept
(early stopping with ``patience``).

A scorer file is a ``torch.save`` of plain tensors and JSON (no pickled classes): the network's
architecture name and weights, the feature normalisation, what it was taught on (model, dataset,
sparsity range, IRP configuration, versions), its held-out rank correlation, and a SHA-256 checksum.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import ConfigError, PrunekitError
from ..files import atomic_torch_save

FORMAT = "prunekit-autosparse-scorer"
VERSION = 1
ARCHS = ("mlp", "resnet")


class ScorerFileError(PrunekitError, ValueError):
    """A scorer file that cannot be read: missing, corrupt, not a scorer, or from a newer format."""


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]


def build_network(arch: str) -> nn.Module:
    """A fresh score network: ``[N, 2] -> [N]``."""
    if arch == "mlp":
        layers = [*_block(2, 16), *_block(16, 64), *_block(64, 1024), *_block(1024, 1024), *_block(1024, 64), nn.Linear(64, 1)]
        return nn.Sequential(*layers, nn.Flatten(0))
    if arch == "resnet":
        from ..models import create

        return _Lifted(create("resnet20", 1, (3, 32, 32), seed=0))
    raise ConfigError(f"unknown scorer network {arch!r}; valid: {', '.join(ARCHS)}")


class _Lifted(nn.Module):
    """Two features lifted to a 3 x 32 x 32 map read by a residual network."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.lift = nn.Sequential(*_block(2, 64), nn.Linear(64, 3 * 32 * 32))
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.lift(x).view(-1, 3, 32, 32)).flatten()


def default_chunk(device: torch.device | str) -> int:
    """Rows of features per forward pass of a score network: 2,048 on the CPU (the activations of a
    chunk stay in cache), 65,536 on an accelerator (fewer, larger launches)."""
    return 2048 if torch.device(device).type == "cpu" else 65536


def average_ranks(x: Tensor) -> Tensor:
    """Ranks ``0 .. n-1`` of a 1-D tensor (float64, on the CPU), ties sharing their average rank."""
    x = x.detach().double().cpu().flatten()
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x)
    r[order] = torch.arange(len(x), dtype=torch.float64)
    uniq, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    if len(uniq) < len(x):
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, r)
        r = (sums / counts)[inverse]
    return r


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else 0.0


@dataclass
class Scorer:
    """A taught score network with its feature normalisation and provenance."""

    arch: str
    network: nn.Module
    mean: Tensor  # [2]
    std: Tensor  # [2]
    meta: dict[str, Any]
    sha256: str | None = None  # the file's checksum (None for a scorer not read from a file)

    @torch.inference_mode()
    def predict(self, features: Tensor, chunk: int | None = None, device: torch.device | str | None = None,
                progress: Callable[[int], None] | None = None, bf16: bool = False) -> Tensor:
        """Predicted survival of every row of ``features`` ``[N, 2]`` (float32, on the CPU).

        Args:
            chunk: rows per forward pass (memory: a ResNet-50 has 25 M weights). Default
                :func:`default_chunk` of the device: on the CPU, 2,048 rows keep the MLP's
                1024-wide activations in cache, 1.4x faster than 65,536 on a quiet machine, more
                beside other processes (``benchmarks/scoring.py --methods autosparse:chunk=65536,autosparse``).
            device: where the network runs (default: where it is; a loaded scorer is on the CPU).
            progress: called with the rows scored so far after every chunk.
            bf16: run the network under bf16 autocast (4.4x faster on one core of a CPU with AMX /
                AVX-512 BF16; predictions within 0.5 % of their range, rank correlation 0.995 with fp32).
        """
        net = self.network.eval()
        device = torch.device(device) if device is not None else next(net.parameters()).device
        if next(net.parameters()).device != device:
            net = copy.deepcopy(net).to(device)  # the loaded scorer is shared (cached): move a copy
        chunk = chunk or default_chunk(device)
        out = []
        done = 0
        for part in features.split(chunk):
            z = ((part.double() - self.mean.double()) / self.std.double()).float().to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out.append(net(z).float().cpu())
            done += len(part)
            if progress is not None:
                progress(done)
        return torch.cat(out)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], half: bool = True) -> Path:
        """Write the scorer (weights in float16 when ``half``: the file stays small)."""
        state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in self.network.state_dict().items()}
        meta = json.dumps(self.meta, sort_keys=True)
        payload = {"format": FORMAT, "version": VERSION, "arch": self.arch, "state": state, "mean": self.mean.double(),
                   "std": self.std.double(), "meta": meta}
        payload["sha256"] = _digest(payload)
        return atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Scorer:
        path = Path(path)
        payload = read_scorer_file(path)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ScorerFileError(f"{str(path)!r} is not an AutoSparse scorer file")
        if payload.get("version") != VERSION:
            raise ScorerFileError(f"{str(path)!r} has scorer-file version {payload.get('version')!r}; this prunekit reads {VERSION}")
        try:
            if _digest(payload) != payload["sha256"]:
                raise ValueError("checksum mismatch")
            net = build_network(payload["arch"])
            net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in payload["state"].items()})
            mean, std = payload["mean"], payload["std"]
            if tuple(mean.shape) != (2,) or tuple(std.shape) != (2,) or not bool((std > 0).all()):
                raise ValueError("bad feature normalisation")
            return cls(payload["arch"], net, mean, std, json.loads(payload["meta"]), payload["sha256"])
        except ConfigError:
            raise
        except Exception as exc:
            raise ScorerFileError(f"{str(path)!r} is corrupt ({type(exc).__name__}: {exc})") from None


def read_scorer_file(path: Path) -> Any:
    """What a scorer file holds (either kind), read without running code from it.

    Raises:
        ScorerFileError: the file is missing or unreadable.
    """
    if not path.is_file():
        raise ScorerFileError(f"scorer file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ScorerFileError(f"{str(path)!r} is not a readable scorer file ({type(exc).__name__}: {exc})") from None


def digest(header: Any, tensors: Mapping[str, Tensor], unnamed: Sequence[Tensor] = ()) -> str:
    """SHA-256 of a scorer file's content: its JSON header, its named tensors in key order, then
    ``unnamed`` tensors in order (every byte of every tensor)."""
    h = hashlib.sha256()
    h.update(json.dumps(header).encode())
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].numpy().tobytes())
    for t in unnamed:
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _digest(payload: Mapping[str, Any]) -> str:
    return digest([payload["format"], payload["version"], payload["arch"], payload["meta"]], payload["state"],
                  (payload["mean"], payload["std"]))


def teach(
    features: Tensor,
    targets: Tensor,
    *,
    arch: str = "mlp",
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 1024,
    holdout: float = 0.1,
    patience: int = 3,
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Scorer:
    """Train a score network on ``(features [N, 2], targets [N])``; keep the best held-out epoch.

    Returns:
        The :class:`Scorer`; ``meta["heldout_spearman"]`` is its rank correlation with the targets
        on the held-out weights, ``meta["heldout_mse"]`` its loss there.
    """
    if features.dim() != 2 or features.shape[1] != 2 or len(features) != len(targets):
        raise ConfigError(f"features must be [N, 2] and targets [N], got {tuple(features.shape)} and {tuple(targets.shape)}")
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(features), generator=g)
    n_val = max(1, int(holdout * len(features)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    mean = features[train_idx].double().mean(0)
    std = features[train_idx].double().std(0).clamp_min(1e-12)
    z = ((features.double() - mean) / std).float()
    y = targets.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(arch)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        best: tuple[float, bytes | None, int] = (math.inf, None, -1)
        since = 0
        history = []
        for epoch in range(epochs):
            net.train()
            order = train_idx[torch.randperm(len(train_idx), generator=g)]
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                opt.zero_grad(set_to_none=True)
                nn.functional.mse_loss(net(z[idx]), y[idx]).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                pred = torch.cat([net(part) for part in z[val_idx].split(default_chunk("cpu"))])
            val_loss = float(nn.functional.mse_loss(pred, y[val_idx]))
            history.append(val_loss)
            if progress:
                print(f"scorer epoch {epoch + 1}: held-out MSE {val_loss:.5f}", flush=True)
            if val_loss < best[0]:
                buffer = io.BytesIO()
                torch.save(net.state_dict(), buffer)
                best = (val_loss, buffer.getvalue(), epoch)
                since = 0
            else:
                since += 1
                if since >= patience:
                    break
        assert best[1] is not None
        net.load_state_dict(torch.load(io.BytesIO(best[1]), weights_only=True))
    scorer = Scorer(arch, net.eval(), mean, std, {})
    rho = spearman(scorer.predict(features[val_idx]), targets[val_idx])
    scorer.meta = {
        **dict(meta or {}), "arch": arch, "heldout_spearman": rho, "heldout_mse": best[0], "best_epoch": best[2] + 1,
        "epochs_run": len(history), "heldout_weights": int(n_val), "train_weights": len(train_idx),
        "teaching": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "holdout": holdout, "patience": patience, "seed": seed},
        "versions": {"prunekit": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    return scorer
