"""prunekit's version: the one source (the package metadata reads it from here, see pyproject.toml)."""

__version__ = "0.1.0"
