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
    """A remote model's server away, as the worker sees it: one event an outage, and
    pauses that grow until the server answers again.  The loop keeps one for the
    active model (it waits); the fill one per model it pauses (the rest goes on).

    Each pause is what the server asked, or twice the last one when it asked for less,
    up to a minute; ``first_wait`` is the pause the first doubling starts from."""

    def __init__(self, first_wait: float = 0.0) -> None:
        self.first_wait = first_wait
        self._since: float | None = None
        self._last: ProviderAway | None = None
        self._model = ""
        self._backoff = first_wait
        self._resume_at = 0.0

    def begins(self, exc: ProviderAway, model: str) -> bool:
        """``model``'s server failed with ``exc``: True when the outage begins with it
        (the caller records it once)."""
        self._last, self._model = exc, model
        self._backoff = min(max(exc.retry_after, self._backoff * 2), MAX_PROVIDER_WAIT_SECONDS)
        self._resume_at = time.monotonic() + self._backoff
        if self._since is None:
            self._since = time.monotonic()
            logger.warning("model %s: server away, its work waits: %s", model, exc)
            return True
        return False

    def detail(self) -> dict[str, Any]:
        """What the ``provider_away`` event records."""
        assert self._last is not None
        return {
            "model": self._model,
            "reason": type(self._last).__name__,
            "error": str(self._last),
            "retry_after": self._last.retry_after,
        }

    @property
    def pausing(self) -> bool:
        """Whether the current pause has not ended yet."""
        return self._resume_at > time.monotonic()

    def wait(self, stop_event: threading.Event) -> None:
        """Wait out the current pause (a stop ends the wait)."""
        stop_event.wait(self._backoff)

    def over(self) -> None:
        """The server answered: the next outage is a new one."""
        if self._since is not None:
            logger.warning(
                "model %s: server back after %.1f s", self._model, time.monotonic() - self._since
            )
        self._since = None
        self._last = None
        self._backoff = self.first_wait
        self._resume_at = 0.0
