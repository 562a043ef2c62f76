"""Checkpoints: written atomically (:mod:`prunekit.files`), read back with plain tensors only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import PrunekitError
from ..files import atomic_torch_save

FORMAT = "prunekit-checkpoint"


class CheckpointError(PrunekitError, ValueError):
    """A checkpoint that cannot be read or does not belong to this run."""


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    return atomic_torch_save(obj, path)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by the trainer (tensors and plain containers only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a prunekit checkpoint")
    return state
