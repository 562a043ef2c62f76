"""The mask file format: bit-packed boolean tensors, JSON metadata and a checksum, in one
``torch.save`` of plain tensors, lists and strings (no pickled classes), so that
``torch.load(path, weights_only=True)`` reads it and a malicious file cannot run code.

Layout (a dict): ``format`` ("prunekit-masks"), ``version`` (1), ``names`` (parameter names in
order), ``shapes`` (one list of ints per name), ``bits`` (one uint8 tensor per name: the flattened
mask packed 8 entries per byte, ``numpy.packbits`` order), ``meta`` (JSON text) and ``sha256`` (of
names, shapes, meta and bits). Files are written atomically (:mod:`prunekit.files`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import MaskFileError
from ..files import atomic_torch_save

FILE_FORMAT = "prunekit-masks"
FILE_VERSION = 1


def write_masks(path: str | os.PathLike[str], masks: Mapping[str, Tensor], meta_json: str) -> Path:
    """Write bool ``masks`` (on the CPU) and their metadata (JSON text) to ``path`` atomically."""
    names = list(masks)
    shapes = [list(m.shape) for m in masks.values()]
    bits = [torch.from_numpy(np.packbits(m.flatten().numpy())) for m in masks.values()]
    payload = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "names": names,
        "shapes": shapes,
        "bits": bits,
        "meta": meta_json,
        "sha256": _digest(names, shapes, bits, meta_json),
    }
    return atomic_torch_save(payload, path)


def read_masks(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``({name: bool tensor}, meta)`` from a mask file.

    Raises:
        MaskFileError: the file is missing, corrupt, truncated or not a prunekit mask file.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskFileError(f"mask file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MaskFileError(f"{str(path)!r} is not a readable prunekit mask file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise MaskFileError(f"{str(path)!r} is not a prunekit mask file")
    if payload.get("version") != FILE_VERSION:
        raise MaskFileError(f"{str(path)!r} has mask-file version {payload.get('version')!r}; this prunekit reads {FILE_VERSION}")
    try:
        names, shapes, bits, meta = payload["names"], payload["shapes"], payload["bits"], payload["meta"]
        if _digest(names, shapes, bits, meta) != payload["sha256"]:
            raise ValueError("checksum mismatch")
        masks = {}
        for name, shape, packed in zip(names, shapes, bits, strict=True):
            n = math.prod(shape)
            if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
                raise ValueError(f"bad bit array for {name!r}")
            flat = np.unpackbits(packed.numpy(), count=n).astype(bool)
            masks[name] = torch.from_numpy(flat).view(*shape)
        return masks, json.loads(meta)
    except Exception as exc:
        raise MaskFileError(f"{str(path)!r} is corrupt ({type(exc).__name__}: {exc})") from None


def _digest(names: list[str], shapes: list[list[int]], bits: list[Tensor], meta: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([names, shapes, meta]).encode())
    for b in bits:
        h.update(b.numpy().tobytes())
    return h.hexdigest()


