"""How the command line shows the library's log lines (the ``prunekit`` logger) on stderr."""

from __future__ import annotations

import logging


class NoticeFormat(logging.Formatter):
    """Progress lines as they are; warnings prefixed with ``prunekit:``."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"prunekit: {text}" if record.levelno >= logging.WARNING else text
