"""prunekit's version, from one source."""

from __future__ import annotations


def _version() -> str:
    """One source: the package metadata, i.e. pyproject.toml (read directly in an uninstalled source tree)."""
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    try:
        return version("prunekit")
    except PackageNotFoundError:  # PYTHONPATH=src without installing
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        if pyproject.is_file():
            for line in pyproject.read_text().splitlines():
                if line.startswith("version = "):
                    return line.split("=", 1)[1].strip().strip('"')
        return "0+unknown"


__version__: str = _version()
