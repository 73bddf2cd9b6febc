"""What the HTTP requests share: the model, its call slots, and two Stores.

The API never touches the worker's Store: /search has one Store of its own, whose pool
every search request shares, and /health and /metrics ask another one (a single
connection) through :class:`Probe`, so a hung health check never holds a connection a
search is waiting for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.embedding import TextEmbedder
from indexer.exceptions import DatabaseUnavailable
from indexer.metrics import Metrics
from indexer.store import Store

#: /health and /metrics give up waiting for the database after this many seconds.
PROBE_TIMEOUT = 3.0
#: Database connections /search may hold at once (further requests wait for one).
SEARCH_CONNECTIONS = 4
#: Seconds a /search request waits for one of them (all busy, or the database away)
#: before it answers 503.
SEARCH_WAIT = 5.0
#: Model calls from HTTP requests at once: concurrent calls share ONNX Runtime's
#: threads (no faster together) and each holds its own batch buffers (memory).
MODEL_CALLS = 2


class Probe:
    """``Store.queue_status()`` for /health and /metrics, with a deadline.

    Each check runs on a daemon thread of its own, one check at a time.  Callers wait
    at most PROBE_TIMEOUT; a check still running (a hung connection) is shared by the
    next callers instead of piling up new ones, and cannot keep the process from
    exiting.
    """

    def __init__(self, dsn: str, schema: str) -> None:
        self._store = Store(dsn, schema, pool_size=1, timeout=PROBE_TIMEOUT, name="http-probe")
        self._lock = threading.Lock()
        self._running: concurrent.futures.Future[dict[str, Any]] | None = None
        self._closed = False

    async def status(self, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise DatabaseUnavailable("the HTTP API is shutting down")
            if self._running is None or self._running.done():
                self._running = self._start()
            running = self._running
        try:
            # shield: a caller that gives up must not cancel the check the next one shares.
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), timeout)
        except TimeoutError:
            raise DatabaseUnavailable(f"the database did not answer within {timeout:g} s") from None

    def _start(self) -> concurrent.futures.Future[dict[str, Any]]:
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def check() -> None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(self._store.queue_status())
            except BaseException as exc:  # handed to the waiting request
                future.set_exception(exc)

        threading.Thread(target=check, name="http-probe", daemon=True).start()
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
        # A check still hung in the database ends with an error once its pool is gone.
        self._store.close()


class Resources:
    """Everything the routes use, created with the app and closed when it stops."""

    def __init__(self, dsn: str, schema: str, embedder: TextEmbedder, metrics: Metrics) -> None:
        self.embedder = embedder
        self.metrics = metrics
        self.store = Store(
            dsn,
            schema,
            pool_size=SEARCH_CONNECTIONS,
            timeout=SEARCH_WAIT,
            name="http-search",
        )
        self.probe = Probe(dsn, schema)
        self.model_calls = threading.BoundedSemaphore(MODEL_CALLS)
        self._closed = False

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors as the daemon would write them: the embedder truncates each text to
        ``max_chars`` itself (``load_embedder`` sets it), as the worker's claim does."""
        with self.model_calls:
            return self.embedder.embed(texts)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.store.close()
            self.probe.close()
