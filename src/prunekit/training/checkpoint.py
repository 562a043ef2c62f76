"""Checkpoints: written atomically (:mod:`prunekit.files`) with a checksum of their content, read back
with plain tensors only, and recovered from when damaged.

A checkpoint is a dict (``format``, the epoch, model, optimizer, RNG, history, ...) saved with
``torch.save``; :func:`save_checkpoint` adds ``sha256``, a digest of every tensor's bytes and every
other value, and keeps the checkpoint it replaces beside it (``<name>.prev``). :func:`load_checkpoint`
recomputes the digest, so bytes damaged inside a tensor are caught even where the file still loads.
:func:`recover_checkpoint` is what a resuming run uses: a damaged or truncated checkpoint is set aside
(``<name>.damaged``) and the previous one taken instead, or training starts over, with a message each
time (an environment event, never the method's failure).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import PrunekitError
from ..files import atomic_torch_save

FORMAT = "prunekit-checkpoint"
logger = logging.getLogger("prunekit")


class CheckpointError(PrunekitError, ValueError):
    """A checkpoint that cannot be read or does not belong to this run."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint whose bytes are not the ones written (truncated, zeroed, overwritten)."""


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    return atomic_torch_save(obj, path)


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other value's
    ``repr``, in a fixed order (mappings by key)."""
    h = hashlib.sha256()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().reshape(-1).contiguous()
            h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, Mapping):
            h.update(b"{")
            for k in sorted(value, key=repr):
                h.update(repr(k).encode())
                visit(value[k])
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for v in value:
                visit(v)
            h.update(b"]")
        else:
            h.update(repr(value).encode())

    visit(obj)
    return h.hexdigest()


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` with its content digest; the checkpoint it replaces is kept as ``<name>.prev``."""
    path = Path(path)
    body = {k: v for k, v in state.items() if k != "sha256"}
    if path.is_file():
        os.replace(path, previous(path))
    return atomic_torch_save({**body, "sha256": content_digest(body)}, path)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by the trainer (tensors and plain containers only), its digest checked.

    Raises:
        CheckpointDamaged: unreadable, truncated, or content not matching its digest.
        CheckpointError: not a prunekit checkpoint.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointDamaged(f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a prunekit checkpoint")
    digest = state.pop("sha256", None)
    if digest is not None and digest != content_digest(state):  # checkpoints from before digests have none
        raise CheckpointDamaged(f"checkpoint {str(path)!r} is damaged: its content does not match its checksum")
    return state


def set_aside(path: Path) -> Path:
    """Move a damaged file out of the way (``<name>.damaged``, numbered if taken); its new path."""
    target = path.with_name(path.name + ".damaged")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged{n}")
    os.replace(path, target)
    return target


def recover_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> tuple[dict[str, Any] | None, list[str]]:
    """The state to resume from: ``path`` if it is sound, else the previous checkpoint, else None
    (start over). Damaged files are set aside; every step is said in a message (also returned)."""
    path = Path(path)
    events: list[str] = []
    for candidate in (path, previous(path)):
        if not candidate.is_file():
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except CheckpointDamaged as exc:
            moved = set_aside(candidate)
            events.append(f"{exc}; set aside as {moved.name}")
            logger.warning("%s; set aside as %s", exc, moved)
            continue
        if candidate != path:
            events.append(f"resumed from the previous checkpoint {candidate.name} (epoch {state['epoch']})")
            logger.warning("resuming from the previous checkpoint %s (epoch %s)", candidate, state["epoch"])
        return state, events
    if events:
        events.append("no sound checkpoint left: training starts over")
        logger.warning("no sound checkpoint of %s left: training starts over", path)
    return None, events
