"""Outages as the worker sees them.

:class:`Outage`: the database's: since when it has been away, how long to wait before
the next try, and when to give up (INDEXER_DB_DOWN_TIMEOUT).
:class:`ProviderOutage`: a remote model's server's: never given up on (the work
waits, nothing is lost or counted against a row); each wait is what the server asked
(Retry-After), or doubles up to a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from indexer.exceptions import DatabaseUnavailable, ProviderAway

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


MAX_PROVIDER_WAIT_SECONDS = 60.0


class ProviderOutage:
    """The active model's server away, as the loop sees it: one event an outage, and
    waits that grow until a batch is written again."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._last: ProviderAway | None = None
        self._backoff = 0.0

    def begins(self, exc: ProviderAway) -> bool:
        """The active model's server failed with ``exc``: True when the outage begins
        with it (the caller records it once)."""
        self._last = exc
        # What the server asked, or twice the last wait when it asked nothing longer.
        self._backoff = min(max(exc.retry_after, self._backoff * 2), MAX_PROVIDER_WAIT_SECONDS)
        if self._since is None:
            self._since = time.monotonic()
            logger.warning("model server away, its work waits: %s", exc)
            return True
        return False

    def detail(self, model: str) -> dict[str, Any]:
        """What the ``provider_away`` event records."""
        assert self._last is not None
        return {
            "model": model,
            "reason": type(self._last).__name__,
            "error": str(self._last),
            "retry_after": self._last.retry_after,
        }

    def wait(self, stop_event: threading.Event) -> None:
        stop_event.wait(self._backoff)

    def over(self) -> None:
        """A batch of the active model was written: its server answered."""
        if self._since is not None:
            logger.warning("model server back after %.1f s", time.monotonic() - self._since)
        self._since = None
        self._last = None
        self._backoff = 0.0
