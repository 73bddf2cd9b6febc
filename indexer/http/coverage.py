"""Each model's coverage and ETA for /metrics: ``indexer_model_status``, read at most
every :data:`COVERAGE_SECONDS`, on a connection of its own.

The other model gauges are read at every scrape (``model_queue_status`` counts the
queue through its index).  Coverage cannot be counted that way: the view counts, per
model, the embedded chunks that lack its vector, a pass over ``chunks`` for each model,
so its cost grows with the table (measured: 28 ms median for 10,000 chunks and two
models, against 0.4 ms for ``model_queue_status``, on two loaded cores).  So a scrape
starts a read only when the last one began COVERAGE_SECONDS ago or more, waits for it
no longer than the other checks, and otherwise answers with the values last read: at
most a minute old (plus one read), which a fill measured in minutes or hours can
afford.  The connection is its own so that /health never waits behind this read; a
read that fails keeps the last values and says nothing of the database's health (the
queue check does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from indexer.store import Store

logger = logging.getLogger(__name__)

#: Seconds between two reads of the models' coverage, at most one each.
COVERAGE_SECONDS = 60.0

Rows = list[dict[str, Any]]
T = TypeVar("T")


class Coverage:
    """The last rows of ``Store.model_status()``, read again when due (see the module
    docstring)."""

    def __init__(self, dsn: str, schema: str, *, every: float = COVERAGE_SECONDS) -> None:
        self._store = Store(dsn, schema, pool_size=1, name="http-coverage")
        #: Seconds between two reads (tests make it 0).
        self.every = every
        self._lock = threading.Lock()
        self._reading: concurrent.futures.Future[Rows] | None = None
        self._started = float("-inf")
        self._rows: Rows | None = None
        self._closed = False

    async def read(self, timeout: float) -> Rows | None:
        """Per model: ``chunks``, ``covered``, ``missing``, ``eta``..., as last read;
        None until a read has succeeded.  Starts a read when one is due and waits up to
        ``timeout`` for it: one that takes longer is picked up by a later scrape."""
        reading = self._due()
        if reading is not None:
            # Slow (TimeoutError) or failed: either way _collect says what came of it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(reading)), timeout)
            self._collect(reading)
        return self._rows

    def _due(self) -> concurrent.futures.Future[Rows] | None:
        """The read in progress, or one started now if the last began ``every`` ago."""
        with self._lock:
            if self._closed:
                return None
            if self._reading is None and time.monotonic() - self._started >= self.every:
                self._started = time.monotonic()
                self._reading = in_thread(self._store.model_status, "http-coverage")
            return self._reading

    def _collect(self, reading: concurrent.futures.Future[Rows]) -> None:
        if not reading.done():
            return
        with self._lock:
            if self._reading is reading:
                self._reading = None
        error = reading.exception()
        if error is not None:
            logger.debug("metrics: the models' coverage was not read: %s", error)
        else:
            self._rows = reading.result()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._store.close()


def in_thread(read: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
    """``read()`` on a daemon thread of its own: a read hung in the database can neither
    hold up a request past its timeout nor keep the process from exiting."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(read())
        except BaseException as exc:  # handed to the request that waits for it
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
