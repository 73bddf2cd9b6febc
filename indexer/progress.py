"""The one-line progress bar of `indexer run --once` on a terminal.

The bar shares the terminal with the log: :meth:`Progress.above` gives a stream for the
log handler whose every write clears the bar's line, prints the log line, then redraws
the bar under it, so the bar stays one line at the bottom and the log scrolls above it
(:func:`indexer.logs.above_progress` points the handlers at it).
"""

from __future__ import annotations

import os
import threading
import time
from typing import TextIO

from indexer.worker.claim import BatchResult

_CLEAR_LINE = "\r\x1b[K"  # to the line's start, erase to its end
_DEFAULT_COLUMNS = 80


class Progress:
    """A one-line progress bar for `indexer run --once` on a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.start = time.monotonic()
        self._line = ""  # the bar as last drawn ("" before the first batch and after finish)
        self._lock = threading.Lock()  # one writer at a time: the worker, or a log line

    def update(self, result: BatchResult) -> None:
        if result.documents:
            return  # the bar counts rows (its total is their backlog), not passages
        with self._lock:
            self.done += len(result.written) + len(result.failed)
            self.total = max(self.total, self.done)  # rows inserted after the start count too
            elapsed = max(time.monotonic() - self.start, 1e-6)
            rate = self.done / elapsed
            left = max(self.total - self.done, 0)
            eta = f"{left / rate:.0f}s" if rate > 0 else "?"
            width = 30
            filled = min(width, int(width * self.done / self.total))
            line = (
                f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} rows"
                f"  {rate:.1f} rows/s  ETA {eta}"
            )
            # Never wider than the terminal: a wrapped bar could not be redrawn in place.
            self._line = line[: max(self._columns() - 1, 1)]
            self.stream.write(_CLEAR_LINE + self._line)
            self.stream.flush()

    def write_above(self, text: str) -> None:
        """Write ``text`` (whole lines) above the bar, then redraw the bar."""
        with self._lock:
            if self._line:
                self.stream.write(_CLEAR_LINE)
            self.stream.write(text)
            if self._line:
                self.stream.write(self._line)
            self.stream.flush()

    def above(self) -> TextIO:
        """A stream for a log handler: each write goes above the bar."""
        return _Above(self)  # type: ignore[return-value]  # what a StreamHandler uses

    def finish(self) -> None:
        with self._lock:
            if self._line:
                self.stream.write("\n")
                self.stream.flush()
            self._line = ""

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or _DEFAULT_COLUMNS
        except (AttributeError, OSError, ValueError):
            return _DEFAULT_COLUMNS


class _Above:
    """The part of a text stream that a ``logging.StreamHandler`` uses."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def write(self, text: str) -> int:
        self.progress.write_above(text)
        return len(text)

    def flush(self) -> None:
        pass  # write_above flushes
