"""The one-line progress bar of `indexer run --once` on a terminal."""

from __future__ import annotations

import time
from typing import TextIO

from indexer.worker.claim import BatchResult


class Progress:
    """A one-line progress bar for `indexer run --once` on a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.start = time.monotonic()

    def update(self, result: BatchResult) -> None:
        self.done += len(result.written) + len(result.failed)
        self.total = max(self.total, self.done)  # rows inserted after the start count too
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        width = 30
        filled = min(width, int(width * self.done / self.total))
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} rows"
            f"  {rate:.1f} rows/s  ETA {eta}   "
        )
        self.stream.flush()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
