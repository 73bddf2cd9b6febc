"""The back-fill: queue the rows a source table held when it was registered.

A source's triggers queue every change made after its registration; the rows already
there are queued by the daemons, a key range at a time (``INDEXER_BACKFILL_BATCH`` keys,
in key order, one short transaction each: ``backfill_source`` of migration 0005), so
that registering a table of millions of rows holds no long lock and no long
transaction on it.  Two daemons never run the same source's range at once (the range
takes the source's row with ``SKIP LOCKED``), and one killed mid-range leaves its
transaction rolled back: the range is read again.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from indexer.exceptions import SourceError

logger = logging.getLogger(__name__)

#: Seconds a source whose table cannot be read waits before its back-fill is tried again.
RETRY_SECONDS = 60.0


class BackfillStore(Protocol):
    def backfills_due(self) -> list[tuple[int, str]]: ...

    def backfill_source(self, source_id: int, batch: int) -> int | None: ...


class Backfill:
    """One range of every source still being back-filled, per :meth:`step`."""

    def __init__(self, store: BackfillStore, batch: int) -> None:
        self.store = store
        self.batch = batch
        self._paused: dict[int, float] = {}

    def step(self) -> int:
        """Queue the next range of each source that needs it; the rows queued."""
        queued = 0
        now = time.monotonic()
        for source_id, name in self.store.backfills_due():
            if self._paused.get(source_id, 0.0) > now:
                continue
            try:
                rows = self.store.backfill_source(source_id, self.batch)
            except SourceError as exc:
                # Its documents would fail the same way: say so once a minute, not at
                # every step, and let the other sources go on.
                logger.warning(
                    "back-fill of source %s paused for %.0f s: %s", name, RETRY_SECONDS, exc
                )
                self._paused[source_id] = now + RETRY_SECONDS
                continue
            if rows:
                logger.info("back-fill of source %s: %d rows queued", name, rows)
                queued += rows
        return queued
