"""How the command line shows the library's log lines (the ``prunekit`` logger) on stderr."""

from __future__ import annotations

import logging
from typing import Any


class NoticeFormat(logging.Formatter):
    """Progress lines as they are; warnings prefixed with ``prunekit:``."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"prunekit: {text}" if record.levelno >= logging.WARNING else text


class ProgressLines:
    """Progress as plain lines for a log file or CI (where a bar cannot redraw): ``desc: done/total
    unit, N s, about M s left`` on the ``prunekit`` logger, at most every ``every`` seconds of work
    (and never more often), so that a long step is never silent for longer than that.

    Args:
        total: units of work (None: unknown, no estimate).
        clock: seconds (``time.monotonic``); a test passes its own.
    """

    def __init__(self, desc: str, total: int | None, unit: str, every: float = 10.0, clock: Any = None):
        import time

        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.clock = clock or time.monotonic
        self.start = self.last = self.clock()

    def update(self, done: int, note: str = "") -> None:
        """``done`` units finished; a line if ``every`` seconds passed since the last one."""
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        if self.total:
            left = elapsed / max(done, 1) * (self.total - done)
            text = f"{self.desc}: {done}/{self.total} {self.unit}, {elapsed:.0f} s (about {left:.0f} s left)"
        else:
            text = f"{self.desc}: {done} {self.unit}, {elapsed:.0f} s"
        logging.getLogger("prunekit").info(text + (f"; {note}" if note else ""))
