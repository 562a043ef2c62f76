"""Exceptions raised by prunekit.

Every error prunekit raises on bad input is a :class:`PrunekitError`. The concrete classes also derive
from the built-in exception a caller would naturally catch (``ValueError``), so ``except ValueError``
keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """A bad argument or option: unknown name, out-of-range value, missing data."""


class MaskError(PrunekitError, ValueError):
    """Masks that are malformed or do not match a model."""


class MaskFileError(MaskError):
    """A mask file that cannot be read (corrupt, truncated or not a prunekit mask file)."""


class ScoreError(PrunekitError, ValueError):
    """A pruning method produced unusable scores (NaN or infinity)."""


class LayerCollapseError(ScoreError):
    """A mask that leaves no path from input to output (asked for with ``collapse="error"``)."""


class UserCodeError(PrunekitError, RuntimeError):
    """An exception raised inside a function the caller gave prunekit (``loss_fn``, ``output_fn``),
    reported as such with its own message (the original exception is its ``__cause__``)."""


class DataError(PrunekitError, ValueError):
    """A dataset that is missing, malformed or does not fit the request."""


class DiskFullError(PrunekitError, OSError):
    """No space left where prunekit writes (an environment failure: retried once space is free)."""

    def __init__(self, folder: object, detail: str = ""):
        import errno
        import shutil

        try:
            free = f"{shutil.disk_usage(str(folder)).free:,} bytes free"
        except OSError:
            free = "free space unknown"
        super().__init__(errno.ENOSPC, f"no space left on {folder} ({free}){'; ' + detail if detail else ''}")

    def __str__(self) -> str:
        return str(self.strerror)


class PrunekitWarning(UserWarning):
    """A result that is valid but probably not what the caller wanted (ties, unused parameters...)."""


def choices(names: Iterable[str]) -> str:
    """Format a list of valid names for an error message."""
    return ", ".join(sorted(names))


def unknown(kind: str, value: object, valid: Iterable[str]) -> ConfigError:
    """Build the standard 'unknown name' error, listing the valid names."""
    return ConfigError(f"unknown {kind} {value!r}; valid {kind}s: {choices(valid)}")
