"""Pruning beside the worker: old events and the vector cache, never in the loop's way.

A thread of its own, sharing the worker's Store (its pool has a connection for it):
once a second after the daemon starts and then every hour, it deletes events older than
INDEXER_EVENTS_RETENTION_DAYS and cached vectors unused for INDEXER_CACHE_MAX_AGE_DAYS
or beyond INDEXER_CACHE_MAX_ENTRIES (least recently used first).  Each statement
deletes a few thousand rows and skips rows another statement holds, so neither the
daemon's claims nor the application ever wait on it; a database outage only
postpones it to the next round.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from indexer.exceptions import DatabaseUnavailable, first_line
from indexer.settings import Settings

logger = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 3600.0
#: The first round starts this soon after the daemon (in this thread, so the worker does
#: not wait for it): a short `run --once` from cron prunes too.
FIRST_PRUNE_SECONDS = 1.0
#: Rows one statement deletes: short statements, so a prune never holds much.
PRUNE_BATCH = 5000


class PruneStore(Protocol):
    def prune_events(self, older_than_seconds: float) -> int: ...

    def prune_cache(self, max_age_seconds: float, max_entries: int, batch: int = ...) -> int: ...


class Pruner:
    """Runs :meth:`prune` every ``every`` seconds in a daemon thread until stopped."""

    def __init__(
        self,
        store: PruneStore,
        settings: Settings,
        *,
        every: float = PRUNE_EVERY_SECONDS,
        first: float = FIRST_PRUNE_SECONDS,
    ) -> None:
        self.store = store
        self.settings = settings
        self.every = every
        self.first = first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pruner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def prune(self) -> tuple[int, int]:
        """One round: (events pruned, cached vectors pruned).  Stops early when asked."""
        s = self.settings
        events = self.store.prune_events(s.events_retention_days * 86400)
        if events:
            logger.info("pruned %d events older than %g days", events, s.events_retention_days)
        vectors = self.prune_cache()
        if vectors:
            logger.info(
                "pruned %d cached vectors (unused for %g days, or beyond %d entries)",
                vectors,
                s.cache_max_age_days,
                s.cache_max_entries,
            )
        return events, vectors

    def prune_cache(self) -> int:
        """Cached vectors unused for INDEXER_CACHE_MAX_AGE_DAYS, then the least recently
        used beyond INDEXER_CACHE_MAX_ENTRIES, a statement at a time until none is left
        (or the pruner is stopped); how many."""
        s = self.settings
        total = 0
        while not self._stop.is_set():
            pruned = self.store.prune_cache(
                s.cache_max_age_days * 86400, s.cache_max_entries, PRUNE_BATCH
            )
            if not pruned:
                break
            total += pruned
        return total

    def _run(self) -> None:
        wait = self.first
        while not self._stop.wait(wait):
            wait = self.every
            try:
                self.prune()
            except DatabaseUnavailable as exc:
                logger.warning("pruning postponed (database unavailable): %s", exc)
            except Exception as exc:  # a bug here must not stop the daemon's work
                logger.error("pruning failed (next try in %g s): %s", self.every, first_line(exc))
