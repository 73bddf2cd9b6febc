"""The HTTP API of `indexer run --http HOST:PORT`: health, metrics, embed and search.

A FastAPI app served by uvicorn in a background thread of the daemon, beside the
worker (which keeps the main thread and the signal handlers).  The app never shares
the worker's database connection: a :class:`Store` is not thread-safe, so /search
borrows one from a small pool of its own, and /health and /metrics ask theirs on a
thread of their own with a deadline, so they answer within seconds even when the
database hangs.  Everything a client sends is bounded before it is parsed (see the
limits below); every error is ``{"error": "..."}`` with a fitting status, never a
traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import psycopg
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.embedding import Embedder
from indexer.exceptions import (
    ConfigurationError,
    DatabaseUnavailable,
    ExtensionMissing,
    IndexerError,
    InvalidInput,
    SchemaNotMigrated,
)
from indexer.limits import MAX_K
from indexer.metrics import CONTENT_TYPE, Metrics
from indexer.settings import Settings
from indexer.store import Store

logger = logging.getLogger(__name__)

#: Texts in one /embed request.
MAX_TEXTS = 256
#: Characters in one text (or /search query); the model reads 256 tokens of it anyway.
MAX_TEXT_CHARS = 100_000
#: Bytes in one request body, checked before the body is read whole.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: /health and /metrics give up waiting for the database after this many seconds.
PROBE_TIMEOUT = 3.0
#: Database connections /search may hold at once (further requests wait for one).
SEARCH_CONNECTIONS = 4
#: Model calls from HTTP requests at once: concurrent calls share ONNX Runtime's
#: threads (no faster together) and each holds its own batch buffers (memory).
MODEL_CALLS = 2
#: Characters of each row's content returned by /search.
CONTENT_CHARS = 1000
#: Open connections uvicorn serves at once; more get a 503.
MAX_CONNECTIONS = 64

ENDPOINTS = ("/health", "/metrics", "/embed", "/search")

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; ``"[::1]:8080"`` -> ``("::1", 8080)``."""
    match = _ADDRESS.match(text.strip())
    port = int(match["port"]) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ConfigurationError(
            f"--http {text!r} is not HOST:PORT with a port from 1 to 65535 "
            "(e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080)"
        )
    return match["v6"] or match["host"], port


# -- request and response bodies ------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChunkIn(_Body):
    chunk_id: int | str
    content: str = Field(json_schema_extra={"maxLength": MAX_TEXT_CHARS})


class EmbedRequest(_Body):
    """Either ``texts``, or ``batch_id`` and ``chunks``."""

    texts: list[str] | None = Field(
        default=None,
        description=f"at most {MAX_TEXTS} texts of at most {MAX_TEXT_CHARS} characters each",
        json_schema_extra={"maxItems": MAX_TEXTS},
    )
    batch_id: int | str | None = None
    chunks: list[ChunkIn] | None = Field(
        default=None,
        description=f"at most {MAX_TEXTS} chunks of at most {MAX_TEXT_CHARS} characters each",
        json_schema_extra={"maxItems": MAX_TEXTS},
    )

    @model_validator(mode="after")
    def _one_shape(self) -> EmbedRequest:
        if (self.texts is None) == (self.chunks is None):
            raise ValueError('give either "texts" or "chunks" (with an optional "batch_id")')
        if self.texts is not None and self.batch_id is not None:
            raise ValueError('"batch_id" goes with "chunks", not with "texts"')
        return self


class EmbedTextsResponse(BaseModel):
    embeddings: list[list[float]]
    model: str
    dim: int


class ChunkOut(BaseModel):
    chunk_id: int | str
    embedding: list[float]


class EmbedChunksResponse(BaseModel):
    batch_id: int | str | None
    chunks: list[ChunkOut]
    model: str
    dim: int


class SearchRequest(_Body):
    query: str = Field(json_schema_extra={"maxLength": MAX_TEXT_CHARS})
    k: int = Field(default=10, ge=1, le=MAX_K)
    filter: dict[str, Any] | None = Field(
        default=None,
        description="only rows whose metadata contains this JSON object (jsonb @>)",
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty")
        return value

    @field_validator("filter")
    @classmethod
    def _storable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """What jsonb cannot hold would otherwise fail in the database as a 500."""
        for text in _strings(value):
            if "\x00" in text:
                raise ValueError("the filter holds a NUL character, which jsonb cannot store")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the filter holds invalid Unicode (a lone surrogate)") from None
        return value


def _strings(value: Any) -> Iterator[str]:
    """Every key and string inside a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class SearchResult(BaseModel):
    id: int
    score: float
    content: str = Field(description=f"the first {CONTENT_CHARS} characters")
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    results: list[SearchResult]


class Health(BaseModel):
    status: str = Field(description='"ok", or "unavailable" (with status code 503)')
    reason: str | None
    database_reachable: bool
    schema_migrated: bool
    model_loaded: bool
    model: str
    dim: int
    backlog: int | None = Field(description="rows pending or in flight")
    pending: int | None
    failed: int | None
    oldest_pending_age_seconds: float | None


class ErrorBody(BaseModel):
    error: str


# -- resources shared by the requests -------------------------------------------------


class _StorePool:
    """Managers for /search, each used by one request at a time."""

    def __init__(self, dsn: str, schema: str, size: int) -> None:
        self._dsn = dsn
        self._schema = schema
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[Store] = []
        self._all: list[Store] = []
        self._closed = False

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        if not self._slots.acquire(timeout=30):
            raise DatabaseUnavailable("all database connections of the HTTP API stayed busy")
        try:
            with self._lock:
                if self._closed:
                    raise DatabaseUnavailable("the HTTP API is shutting down")
                if self._idle:
                    store = self._idle.pop()
                else:
                    store = Store(self._dsn, self._schema)
                    self._all.append(store)
            try:
                yield store
            finally:
                with self._lock:
                    self._idle.append(store)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stores, self._all, self._idle = self._all, [], []
        for store in stores:
            store.close()


class _Probe:
    """``Store.queue_status()`` for /health and /metrics, with a deadline.

    Each check runs on a daemon thread of its own, one check at a time (so the
    Store is never used by two threads at once).  Callers wait at most
    PROBE_TIMEOUT; a check still running (a hung connection) is shared by the next
    callers instead of piling up new ones, and cannot keep the process from exiting.
    """

    def __init__(self, dsn: str, schema: str) -> None:
        self._manager = Store(dsn, schema)
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
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), timeout)
        except TimeoutError:
            raise DatabaseUnavailable(f"the database did not answer within {timeout:g} s") from None

    def _start(self) -> concurrent.futures.Future[dict[str, Any]]:
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def check() -> None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(self._manager.queue_status())
            except BaseException as exc:  # handed to the waiting request
                future.set_exception(exc)

        threading.Thread(target=check, name="indexer-http-probe", daemon=True).start()
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            running = self._running
        if running is not None:
            concurrent.futures.wait([running], timeout=PROBE_TIMEOUT)
            if not running.done():
                return  # a hung check keeps its connection until the process ends
        self._manager.close()


class _Resources:
    def __init__(self, settings: Settings, dsn: str, embedder: Embedder, metrics: Metrics) -> None:
        self.settings = settings
        self.embedder = embedder
        self.metrics = metrics
        self.pool = _StorePool(dsn, settings.schema, SEARCH_CONNECTIONS)
        self.probe = _Probe(dsn, settings.schema)
        self.model_calls = threading.BoundedSemaphore(MODEL_CALLS)
        self._closed = False

    def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors as the daemon would write them (same truncation to max_chars)."""
        limit = self.settings.max_chars
        with self.model_calls:
            return self.embedder.embed([t[:limit] for t in texts])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.close()
            self.probe.close()


# -- middleware -----------------------------------------------------------------------


async def _send_error(send: Send, status: int, message: str, *, close: bool = False) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _LimitBody:
    """Refuse bodies over MAX_BODY_BYTES (413) before reading them whole.

    A declared Content-Length is checked before any of the body is read; a chunked
    body is read up to the limit and refused as soon as it passes it.  The accepted
    body is handed on to the app unchanged.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the request body is larger than {self.limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, 400, "invalid Content-Length header", close=True)
                return
            if int(declared) > self.limit:
                await _send_error(send, 413, too_large, close=True)
                return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            part = message.get("body", b"")
            size += len(part)
            if size > self.limit:
                await _send_error(send, 413, too_large, close=True)
                return
            parts.append(part)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        del parts
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class _CatchAll:
    """An unexpected exception becomes a 500 ``{"error": ...}``; its traceback goes to the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if scope["type"] != "http":
                raise
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await _send_error(send, 500, "internal error (see the daemon's log)")


class _CountRequests:
    """Feed the request counter and latency histogram of :class:`Metrics`."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        start = time.perf_counter()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


# -- the app --------------------------------------------------------------------------


def _status_code(exc: IndexerError) -> int:
    if isinstance(exc, DatabaseUnavailable | SchemaNotMigrated | ExtensionMissing):
        return 503
    if isinstance(exc, InvalidInput):
        return 422
    return 500


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({error.get('ctx', {}).get('error', '')})"
        problems.append(
            f"{where}: {message}" if where and error.get("type") != "json_invalid" else message
        )
    more = len(exc.errors()) - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _seconds(value: Any) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else None


def _rounded(vectors: np.ndarray) -> list[list[float]]:
    """Seven decimals (the CLI's precision) in short JSON numbers."""
    rounded: list[list[float]] = np.round(vectors.astype(np.float64), 7).tolist()
    return rounded


def _too_large(what: str) -> HTTPException:
    return HTTPException(status_code=413, detail=what)


def _check_texts(texts: list[str], noun: str) -> None:
    if len(texts) > MAX_TEXTS:
        raise _too_large(f"{len(texts)} {noun}s in one request; at most {MAX_TEXTS}")
    for i, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise _too_large(f"{noun} {i} has {len(text)} characters; at most {MAX_TEXT_CHARS}")


def create_app(
    settings: Settings, *, dsn: str, embedder: Embedder, metrics: Metrics | None = None
) -> FastAPI:
    """The API over ``dsn``; its connections close when the app shuts down."""
    res = _Resources(settings, dsn, embedder, metrics or Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(res.close)

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (413, 422, 503)
    }
    app = FastAPI(
        title="indexer",
        summary="Embeddings of all-MiniLM-L6-v2 and similarity search over PostgreSQL rows.",
        version="0.1.0",
        lifespan=lifespan,
        responses={500: {"model": ErrorBody}},
    )
    app.state.indexer = res
    app.add_middleware(_LimitBody)
    app.add_middleware(_CatchAll)
    app.add_middleware(_CountRequests, metrics=res.metrics)

    @app.exception_handler(IndexerError)
    async def indexer_error(request: Request, exc: IndexerError) -> JSONResponse:
        status = _status_code(exc)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": f"database error: {_first_line(exc)}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            message = "send a JSON body with the header Content-Type: application/json"
        else:
            message = _validation_message(exc)
        return JSONResponse({"error": message}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        """Database reachable and migrated, model loaded, backlog; 503 with a reason if not."""
        reachable = migrated = False
        reason: str | None = None
        status: dict[str, Any] = {}
        try:
            status = await res.probe.status()
            reachable = migrated = True
        except (SchemaNotMigrated, ExtensionMissing) as exc:
            reachable, reason = True, str(exc)
        except DatabaseUnavailable as exc:
            reason = str(exc)
        except psycopg.Error as exc:
            reachable, reason = True, f"database error: {_first_line(exc)}"
        body = Health(
            status="ok" if reason is None else "unavailable",
            reason=reason,
            database_reachable=reachable,
            schema_migrated=migrated,
            model_loaded=True,
            model=embedder.name,
            dim=embedder.dim,
            backlog=status.get("backlog"),
            pending=status.get("pending"),
            failed=status.get("failed"),
            oldest_pending_age_seconds=_seconds(status.get("oldest_pending_age")),
        )
        return JSONResponse(body.model_dump(), status_code=200 if reason is None else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
    )
    async def metrics_text() -> Response:
        """Prometheus metrics; the backlog gauges are read from the database first."""
        try:
            res.metrics.observe_status(await res.probe.status())
            res.metrics.database_up.set(1)
        except (IndexerError, psycopg.Error) as exc:
            logger.debug("metrics: database gauges not refreshed: %s", exc)
            res.metrics.database_up.set(0)
        return Response(res.metrics.render(), media_type=CONTENT_TYPE)

    @app.post(
        "/embed",
        response_model=EmbedTextsResponse | EmbedChunksResponse,
        responses=errors,
    )
    def embed(body: EmbedRequest) -> Response:
        """Vectors for texts (or for chunks, echoing their ids); no database involved."""
        if body.chunks is not None:
            _check_texts([c.content for c in body.chunks], "chunk")
            vectors = _rounded(res.embed([c.content for c in body.chunks]))
            out: dict[str, Any] = {
                "batch_id": body.batch_id,
                "chunks": [
                    {"chunk_id": c.chunk_id, "embedding": v}
                    for c, v in zip(body.chunks, vectors, strict=True)
                ],
            }
        else:
            assert body.texts is not None
            _check_texts(body.texts, "text")
            out = {"embeddings": _rounded(res.embed(body.texts))}
        out.update(model=embedder.name, dim=embedder.dim)
        return Response(json.dumps(out), media_type="application/json")

    @app.post("/search", response_model=SearchResponse, responses=errors)
    def search(body: SearchRequest) -> SearchResponse:
        """The k embedded rows nearest to the query (cosine), best first."""
        _check_texts([body.query], "query")
        vector = res.embed([body.query])[0]
        with res.pool.store() as store:
            hits = store.search(
                vector, body.k, metadata_filter=body.filter, max_chars=CONTENT_CHARS
            )
        return SearchResponse(
            results=[
                SearchResult(id=h.id, score=h.score, content=h.content, metadata=h.metadata)
                for h in hits
            ]
        )

    return app


# -- the server -----------------------------------------------------------------------


class HttpServer:
    """uvicorn in a background thread, on a socket bound before it starts.

    Binding here (not in uvicorn) turns "address in use" into a one-line
    ConfigurationError and tells the bound port when ``port`` is 0.  uvicorn installs
    no signal handlers outside the main thread: the daemon keeps SIGINT/SIGTERM.
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Listen, serve in a thread, and return once requests are answered."""
        sock = _bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            http="h11",
            loop="asyncio",
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
        )
        server = uvicorn.Server(config)

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # reported by start(); the thread just ends
                self._failure = exc
            finally:
                sock.close()

        self._server = server
        self._thread = threading.Thread(target=serve, name="indexer-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                failure = self._failure
                reason = (
                    _first_line(failure)
                    if failure is not None and not isinstance(failure, SystemExit)
                    else "it did not start (see the log)"
                )
                raise ConfigurationError(f"the HTTP API on {self.url} failed: {reason}")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: finish answered requests (up to a few seconds), then close."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        resources = getattr(self.app.state, "indexer", None)
        if isinstance(resources, _Resources):
            resources.close()  # in case a forced exit skipped the app's shutdown
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def _bind(host: str, port: int) -> socket.socket:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {where}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigurationError(f"cannot listen on {where}: {reason}") from None
    sock.setblocking(False)
    return sock
