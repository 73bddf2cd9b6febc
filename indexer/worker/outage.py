"""The database's outages as the worker sees them: since when it has been away, how
long to wait before the next try, and when to give up (INDEXER_DB_DOWN_TIMEOUT)."""

from __future__ import annotations

import logging
import threading
import time

from indexer.exceptions import DatabaseUnavailable

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 10.0


class Outage:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._down_since: float | None = None
        self._backoff = 0.5

    def begins(self, exc: DatabaseUnavailable) -> bool:
        """A call failed with ``exc``: True when the outage begins with it (the caller
        then gives back what it cannot keep); DatabaseUnavailable once the outage has
        lasted longer than the timeout."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            logger.warning("database unavailable, retrying: %s", exc)
            return True
        if now - self._down_since > self.timeout:
            raise DatabaseUnavailable(
                f"database unavailable for {now - self._down_since:.0f} s "
                f"(INDEXER_DB_DOWN_TIMEOUT={self.timeout:g}): {exc}"
            ) from exc
        return False

    def wait(self, stop_event: threading.Event) -> None:
        """Wait before the next try, twice as long each time (a stop ends the wait)."""
        stop_event.wait(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    def over(self) -> None:
        """A call succeeded."""
        if self._down_since is not None:
            logger.warning(
                "database available again after %.1f s", time.monotonic() - self._down_since
            )
        self._down_since = None
        self._backoff = 0.5
