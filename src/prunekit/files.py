"""Writing files so that a crash, a kill or a full disk leaves the old file or the new one, never half.

Every file prunekit writes (masks, checkpoints, run configurations, per-layer reports, tables, plots,
IMP state) goes through :func:`atomic_write`: the content goes to a temporary file in the same
folder, is flushed and fsynced, then renamed over the target (an atomic replace on POSIX and
Windows), and the folder entry is fsynced where the platform allows it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import DiskFullError


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and disk_full(exc, path.parent):
            raise DiskFullError(path.parent, f"{path.name} was not written (the earlier file, if any, is intact)") from exc
        raise
    _fsync_dir(path.parent)
    return path


def disk_full(exc: BaseException, folder: Path, margin: int = 1 << 20) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, came from a full disk: ENOSPC or EDQUOT,
    or a write error of torch's or SQLite's own (which hide the errno) with less than ``margin`` bytes left."""
    import errno
    import shutil

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    if not any(s in text for s in ("enforce fail", "pytorchstreamwriter", "file write failed", "unexpected pos", "disk is full",
                                   "disk i/o error", "no space")):
        return False
    try:
        return shutil.disk_usage(str(folder)).free < margin
    except OSError:
        return False


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    def write(f: IO[bytes]) -> None:
        f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **kwargs: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``kwargs`` go to ``json.dumps``)."""
    return atomic_write_text(path, json.dumps(obj, **kwargs) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_savefig(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically (the format follows the suffix)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    return atomic_write_bytes(path, buffer.getvalue())
