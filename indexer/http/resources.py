"""What the HTTP requests share: the model, its call slots, two Stores, the thread
limiters of /embed and /search, the memory budget of bodies, and the outage log.

The API never touches the worker's Store: /search has one Store of its own, whose pool
every search request shares, and /health and /metrics ask another one (a single
connection) through :class:`Probe`, so a hung health check never holds a connection a
search is waiting for.  Every statement on either runs under PostgreSQL's
``statement_timeout`` (``HttpLimits.statement_timeout``).  /embed and /search each run
in threads of their own (an ``anyio.CapacityLimiter`` each): searches stuck on a hung
database cannot take the threads /embed needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import psycopg

from indexer.embedding import TextEmbedder
from indexer.exceptions import DatabaseUnavailable
from indexer.http.bounds import HttpLimits
from indexer.http.coverage import Coverage, in_thread
from indexer.http.middleware import MemoryBudget
from indexer.metrics import Metrics
from indexer.registry import Embedders
from indexer.settings import Settings
from indexer.store import Store

logger = logging.getLogger(__name__)

#: /health and /metrics give up waiting for the database after this many seconds.
PROBE_TIMEOUT = 3.0
#: Database connections /search may hold at once (further requests wait for one).
SEARCH_CONNECTIONS = 4
#: Seconds a /search request waits for one of them (all busy, or the database away)
#: before it answers 503.
SEARCH_WAIT = HttpLimits.pool_wait
#: Model calls from HTTP requests at once: concurrent calls share ONNX Runtime's
#: threads (no faster together) and each holds its own batch buffers (memory).
MODEL_CALLS = 2


class Probe:
    """``Store.queue_status()`` for /health and /metrics, and
    ``Store.source_queue_status()`` for /metrics, with a deadline.

    Each check runs on a daemon thread of its own, one check of each kind at a time.
    Callers wait at most PROBE_TIMEOUT; a check still running (a hung connection) is
    shared by the next callers instead of piling up new ones, and cannot keep the
    process from exiting.
    """

    def __init__(self, dsn: str, schema: str, outage: OutageLog | None = None) -> None:
        self._store = Store(dsn, schema, pool_size=1, timeout=PROBE_TIMEOUT, name="http-probe")
        self._outage = outage
        self._lock = threading.Lock()
        self._running: dict[str, concurrent.futures.Future[Any]] = {}
        self._closed = False

    async def status(self, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
        """pending, in_flight, backlog, failed, oldest_pending_age (whole table)."""
        result: dict[str, Any] = await self._check("queue", self._store.queue_status, timeout)
        return result

    async def sources(self, timeout: float = PROBE_TIMEOUT) -> list[dict[str, Any]]:
        """Per source: pending, in_flight, failed, indexed, lag."""
        check = self._store.source_queue_status
        result: list[dict[str, Any]] = await self._check("sources", check, timeout)
        return result

    async def models(self, timeout: float = PROBE_TIMEOUT) -> list[dict[str, Any]]:
        """Per model: active, queued, failed (cheap: the queue's index)."""
        check = self._store.model_queue_status
        result: list[dict[str, Any]] = await self._check("models", check, timeout)
        return result

    async def _check(self, kind: str, check: Callable[[], Any], timeout: float) -> Any:
        with self._lock:
            if self._closed:
                raise DatabaseUnavailable("the HTTP API is shutting down")
            running = self._running.get(kind)
            if running is None or running.done():
                running = self._running[kind] = in_thread(check, "http-probe")
        try:
            # shield: a caller that gives up must not cancel the check the next one shares.
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), timeout)
        except TimeoutError:
            exc = DatabaseUnavailable(f"the database did not answer within {timeout:g} s")
            if self._outage is not None:
                self._outage.down(exc)
            raise exc from None
        except DatabaseUnavailable as exc:
            if self._outage is not None:
                self._outage.down(exc)
            raise
        if self._outage is not None:
            self._outage.up()
        return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
        # A check still hung in the database ends with an error once its pool is gone.
        self._store.close()


class OutageLog:
    """One WARNING when the HTTP API loses the database, one INFO when it is back.

    Every failed request during an outage would otherwise log a line of its own: the
    ones in between go to DEBUG.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down = False

    def down(self, exc: BaseException) -> None:
        with self._lock:
            was_down, self._down = self._down, True
        if was_down:
            logger.debug("HTTP API: database still unavailable: %s", exc)
        else:
            logger.warning("HTTP API: database unavailable: %s", exc)

    def up(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.info("HTTP API: database reachable again")

    @property
    def is_down(self) -> bool:
        return self._down


def with_statement_timeout(dsn: str, seconds: float) -> str:
    """``dsn`` whose sessions run with ``statement_timeout`` (added to its own options).

    Kept in the form it was given (a URL stays a URL), so that error messages show
    the DSN the user wrote, plus the option."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    option = f"-c statement_timeout={max(1, round(seconds * 1000))}"
    if info.get("options"):
        info["options"] = f"{info['options']} {option}"
        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    if "://" in dsn:
        return f"{dsn}{'&' if '?' in dsn else '?'}options={urllib.parse.quote(option)}"
    return f"{dsn} options='{option}'"


class Resources:
    """Everything the routes use, created with the app and closed when it stops."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        embedder: TextEmbedder,
        metrics: Metrics,
        limits: HttpLimits | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        self.embedder = embedder
        #: Every registered model's embedder: a query is embedded by the model it is
        #: compared with.
        self.embedders = Embedders(settings or Settings(), embedder)
        self.metrics = metrics
        self.limits = limits = limits or HttpLimits()
        self.outage = OutageLog()
        dsn = with_statement_timeout(dsn, limits.statement_timeout)
        self.store = Store(
            dsn,
            schema,
            pool_size=SEARCH_CONNECTIONS,
            timeout=limits.pool_wait,
            name="http-search",
        )
        self.probe = Probe(dsn, schema, self.outage)
        self.coverage = Coverage(dsn, schema)
        self.model_calls = threading.BoundedSemaphore(MODEL_CALLS)
        self.embed_threads = anyio.CapacityLimiter(limits.embed_threads)
        self.search_threads = anyio.CapacityLimiter(limits.search_threads)
        self.budget = MemoryBudget(limits.memory_budget)
        self._closed = False

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors as the daemon would write them: the embedder truncates each text to
        ``max_chars`` itself (``load_embedder`` sets it), as the worker's claim does."""
        with self.model_calls:
            return self.embedder.embed(texts)

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of search queries (the model's query prefix, if it has one)."""
        with self.model_calls:
            return self.embedder.embed_queries(texts)

    def embed_query(self, text: str, model: str | None) -> tuple[npt.NDArray[np.float32], str]:
        """A search query's vector by the model it names (None: the active one), and
        that model's name (the search passes it on, so a switch in between cannot mix
        models)."""
        embedder, name = self.embedder_for(model)
        with self.model_calls:
            return embedder.embed_queries([text])[0], name

    def embedder_for(self, model: str | None) -> tuple[TextEmbedder, str]:
        """The embedder and registered name of the model ``model`` names (None: the
        active one); InvalidInput naming the registered ones for an unknown name.  Reads
        the registry (the database)."""
        return self.embedders.for_query(self.store.models(), model)

    def embed_documents(
        self, embedder: TextEmbedder, texts: Sequence[str]
    ) -> tuple[npt.NDArray[np.float32], list[int]]:
        """Document vectors of ``texts`` by ``embedder`` (as the daemon writes them), and
        the tokens the model read of each: after truncation, the document prefix and
        the special tokens included."""
        with self.model_calls:
            tokenized = embedder.tokenize(texts)
            return embedder.embed_tokenized(tokenized), tokenized.lengths

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.store.close()
            self.probe.close()
            self.embedders.close()
            self.coverage.close()
