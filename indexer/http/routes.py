"""The FastAPI app: /health, /metrics, /embed and /search, and its error handlers.

Every error a client can cause is ``{"error": "..."}`` with a fitting status, never a
traceback: the handlers below map the package's exceptions, driver errors, pydantic's
validation errors and Starlette's own (404, 405) onto that one shape.

/embed and /search read their body as bytes on the event loop (already bounded by
:class:`~indexer.http.middleware.LimitBody`) and do everything else, parsing
included, in threads of their own (:mod:`indexer.http.parse`): a large body never
stalls /health.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.embedding import TextEmbedder
from indexer.exceptions import (
    ConfigurationError,
    DatabaseRefused,
    DatabaseUnavailable,
    ExtensionMissing,
    IndexerError,
    InvalidInput,
    SchemaNotMigrated,
    SourceError,
    first_line,
)
from indexer.http import console
from indexer.http.bounds import HttpLimits
from indexer.http.docs import render as render_docs
from indexer.http.middleware import (
    CatchAll,
    CountRequests,
    LimitBody,
    LimitRequests,
    RequireToken,
)
from indexer.http.parse import BodyError, parse_body, validation_message
from indexer.http.resources import Resources
from indexer.http.schemas import (
    DocumentResult,
    DocumentSearchResponse,
    EmbedChunksResponse,
    EmbedRequest,
    EmbedTextsResponse,
    ErrorBody,
    Health,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from indexer.limits import CONTENT_CHARS, MAX_TEXT_CHARS, MAX_TEXTS
from indexer.metrics import CONTENT_TYPE, Metrics
from indexer.settings import Settings

logger = logging.getLogger(__name__)

#: The paths the request metrics name; any other path counts as "other".
ENDPOINTS = ("/health", "/metrics", "/embed", "/search", *console.ENDPOINTS)

#: The error bodies the OpenAPI schema lists for /embed and /search.
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 408, 413, 422, 503)
}

_NOT_JSON = "send a JSON body with the header Content-Type: application/json"


def load_tokens(settings: Settings) -> list[str]:
    """The bearer tokens the API accepts: ``INDEXER_HTTP_TOKEN`` and every non-blank
    line of ``INDEXER_HTTP_TOKEN_FILE``; none: the API is open (bind it to loopback)."""
    tokens = [settings.http_token.strip()] if settings.http_token else []
    path = settings.http_token_file
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigurationError(
                f"INDEXER_HTTP_TOKEN_FILE={str(path)!r} cannot be read: {reason}"
            ) from None
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise ConfigurationError(f"INDEXER_HTTP_TOKEN_FILE={str(path)!r} holds no token")
        tokens.extend(from_file)
    return tokens


def create_app(
    settings: Settings,
    *,
    dsn: str,
    embedder: TextEmbedder,
    metrics: Metrics | None = None,
    limits: HttpLimits | None = None,
) -> FastAPI:
    """The API over ``dsn``; its connections close when the app shuts down.

    ``limits``: the HTTP layer's bounds (:class:`HttpLimits`; its defaults unless
    given).  Raises ConfigurationError for an unreadable or empty token file.
    """
    tokens = load_tokens(settings)
    limits = limits or HttpLimits()
    res = Resources(dsn, settings.schema, embedder, metrics or Metrics(), limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(res.close)

    app = FastAPI(
        title="indexer",
        summary="Embeddings of all-MiniLM-L6-v2 and similarity search over PostgreSQL rows.",
        version="0.1.0",
        lifespan=lifespan,
        responses={500: {"model": ErrorBody}},
        # FastAPI's pages load Swagger UI / ReDoc from a CDN: blank offline.  /docs is
        # ours instead (indexer.http.docs), rendered from the same schema.
        docs_url=None,
        redoc_url=None,
    )
    # HttpServer.stop closes them too, in case a forced exit skipped the lifespan's end.
    app.state.indexer = res
    # For the daemon's start line (the tokens themselves are never logged).
    app.state.authentication = (
        f"on ({len(tokens)} bearer token{'' if len(tokens) == 1 else 's'} accepted)"
        if tokens
        else "off (set INDEXER_HTTP_TOKEN or INDEXER_HTTP_TOKEN_FILE to require a token)"
    )
    # Innermost first: the token is checked before the request counts against the
    # limit, and both before any of its body is read.
    app.add_middleware(
        LimitBody, limit=limits.max_body_bytes, budget=res.budget, timeout=limits.body_timeout
    )
    app.add_middleware(LimitRequests, limit=limits.max_requests)
    app.add_middleware(RequireToken, tokens=tokens, open_paths=console.TOKEN_FREE_PATHS)
    app.add_middleware(CatchAll)
    app.add_middleware(CountRequests, metrics=res.metrics, endpoints=ENDPOINTS)
    _add_error_handlers(app, res)
    _add_health(app, res)
    _add_metrics(app, res)
    _add_embed(app, res)
    _add_search(app, res)
    _document_bodies(app, EmbedRequest, SearchRequest)
    _add_docs(app)
    app.include_router(console.router(res))
    return app


def _add_docs(app: FastAPI) -> None:
    page: list[str] = []

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """The API's documentation, one HTML page that needs nothing from the internet."""
        if not page:
            page.append(render_docs(app.openapi()))
        return HTMLResponse(page[0])


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _document_bodies(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add the request models to the OpenAPI components (the routes parse their bodies
    themselves, so FastAPI does not know them)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(found.pop("$defs", {}))
                components[model.__name__] = found
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- errors ---------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI, res: Resources) -> None:
    @app.exception_handler(IndexerError)
    async def indexer_error(request: Request, exc: IndexerError) -> JSONResponse:
        status = _status_code(exc)
        if status == 503:
            res.outage.down(exc)  # one line per outage, not one per request
        elif status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(BodyError)
    async def body_error(request: Request, exc: BodyError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": f"database error: {first_line(exc)}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            # FastAPI then parsed no body at all: its "Field required" would mislead.
            message = _NOT_JSON
        else:
            message = validation_message(exc.errors())
        return JSONResponse({"error": message}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )


def _status_code(exc: IndexerError) -> int:
    if isinstance(exc, DatabaseUnavailable | SchemaNotMigrated | ExtensionMissing):
        return 503
    if isinstance(exc, InvalidInput | SourceError):
        return 422
    return 500


def _check_texts(texts: Sequence[str], noun: str) -> None:
    """413 for more texts, or longer ones, than one request may carry."""
    if len(texts) > MAX_TEXTS:
        raise HTTPException(413, f"{len(texts)} {noun}s in one request; at most {MAX_TEXTS}")
    for i, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise HTTPException(
                413, f"{noun} {i} has {len(text)} characters; at most {MAX_TEXT_CHARS}"
            )


# -- /health and /metrics -------------------------------------------------------------


def _add_health(app: FastAPI, res: Resources) -> None:
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
        except (DatabaseUnavailable, DatabaseRefused) as exc:
            reason = str(exc)
        except IndexerError as exc:  # a privilege the API's role lacks, say
            reachable, reason = True, str(exc)
        except psycopg.Error as exc:
            reachable, reason = True, f"database error: {first_line(exc)}"
        body = Health(
            status="ok" if reason is None else "unavailable",
            reason=reason,
            database_reachable=reachable,
            schema_migrated=migrated,
            model_loaded=True,
            model=res.embedder.name,
            dim=res.embedder.dim,
            backlog=status.get("backlog"),
            pending=status.get("pending"),
            failed=status.get("failed"),
            oldest_pending_age_seconds=_seconds(status.get("oldest_pending_age")),
            documents_backlog=status.get("documents_backlog"),
            documents_failed=status.get("documents_failed"),
            search_role=status.get("search_role"),
        )
        return JSONResponse(body.model_dump(), status_code=200 if reason is None else 503)


def _seconds(value: Any) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else None


def _add_metrics(app: FastAPI, res: Resources) -> None:
    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
    )
    async def metrics_text() -> Response:
        """Prometheus metrics; the backlog and per-source gauges are read from the database
        first."""
        try:
            res.metrics.observe_status(await res.probe.status())
            res.metrics.observe_sources(await res.probe.sources())
            res.metrics.database_up.set(1)
        except (IndexerError, psycopg.Error) as exc:
            logger.debug("metrics: database gauges not refreshed: %s", exc)
            res.metrics.database_up.set(0)
        return Response(res.metrics.render(), media_type=CONTENT_TYPE)


# -- /embed and /search ---------------------------------------------------------------
# The handlers read the body and hand it to a thread of their endpoint's own limiter:
# parsing, the model call and the query never run on the event loop, and neither
# endpoint can take the other's threads.


def _require_json(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise BodyError(422, _NOT_JSON)


def _add_embed(app: FastAPI, res: Resources) -> None:
    @app.post(
        "/embed",
        response_model=EmbedTextsResponse | EmbedChunksResponse,
        responses=_ERRORS,
        openapi_extra=_body_schema(EmbedRequest),
    )
    async def embed(request: Request) -> Response:
        """Vectors for texts (or for chunks, echoing their ids); no database involved."""
        _require_json(request)
        raw = await request.body()
        work = functools.partial(_embed, res, raw)
        return await anyio.to_thread.run_sync(work, limiter=res.embed_threads)


def _embed(res: Resources, raw: bytes) -> Response:
    body = parse_body(raw, EmbedRequest, res.limits)
    del raw
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
        assert body.texts is not None  # the body's validator allows no third shape
        _check_texts(body.texts, "text")
        out = {"embeddings": _rounded(res.embed(body.texts))}
    out.update(model=res.embedder.name, dim=res.embedder.dim)
    # Serialized here, not through response_model: no pydantic pass over every float
    # (up to 256 x 384 of them).
    return Response(json.dumps(out), media_type="application/json")


def _rounded(vectors: npt.NDArray[np.float32]) -> list[list[float]]:
    """Seven decimals (the CLI's precision) in short JSON numbers."""
    rounded: list[list[float]] = np.round(vectors.astype(np.float64), 7).tolist()
    return rounded


def _add_search(app: FastAPI, res: Resources) -> None:
    @app.post(
        "/search",
        response_model=SearchResponse | DocumentSearchResponse,
        responses=_ERRORS,
        openapi_extra=_body_schema(SearchRequest),
    )
    async def search(request: Request) -> Response:
        """The k embedded rows nearest to the query (cosine), best first; with
        ``"group": "document"``, the k nearest documents of the sources instead."""
        _require_json(request)
        raw = await request.body()
        deadline = res.limits.search_deadline
        work = functools.partial(_search, res, raw)
        try:
            with anyio.fail_after(deadline):
                # abandon_on_cancel: a thread stuck in a hung database keeps its
                # limiter slot (so the next searches queue), but its client is answered.
                return await anyio.to_thread.run_sync(
                    work, limiter=res.search_threads, abandon_on_cancel=True
                )
        except TimeoutError:
            raise DatabaseUnavailable(
                f"the search did not finish within {deadline:g} s "
                "(the database is slow or away, or too many searches are waiting)"
            ) from None


def _search(res: Resources, raw: bytes) -> Response:
    body = parse_body(raw, SearchRequest, res.limits)
    del raw
    _check_filter(body.filter, res.limits.max_filter_bytes)
    _check_texts([body.query], "query")
    vector = res.embed([body.query])[0]
    answer = _Answer(res.limits.max_answer_bytes)
    try:
        if body.group == "document":
            # Each document is written into the answer as it is read, and the reading
            # stops when the answer is full: never k documents of 20 passages in memory.
            res.store.search_documents(
                vector,
                body.k,
                filter=body.filter,
                source=body.source,
                passages=body.passages,
                take=lambda d: answer.add(DocumentResult.model_validate(d, from_attributes=True)),
            )
        else:
            hits = res.store.search(
                vector, body.k, metadata_filter=body.filter, max_chars=CONTENT_CHARS
            )
            for h in hits:
                result = SearchResult(
                    id=h.id, score=h.score, content=h.content, metadata=h.metadata
                )
                if not answer.add(result):
                    break
            del hits
    except DatabaseUnavailable as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            raise DatabaseUnavailable(
                f"the search ran past the statement timeout ({res.limits.statement_timeout:g} s)"
            ) from exc
        raise
    res.outage.up()
    return Response(answer.body(), media_type="application/json")


class _Answer:
    """The body of a /search answer, ``{"results": [...]}`` as pydantic writes it, built a
    result at a time and never longer than ``limit`` bytes: a result that would pass it
    is left out, and so is every one after it, and the answer ends with
    ``"truncated": true``."""

    _HEAD = b'{"results":['
    _END = b"]}"
    _CUT_END = b'],"truncated":true}'

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = len(self._HEAD) + len(self._CUT_END)
        self.truncated = False

    def add(self, result: BaseModel) -> bool:
        """Append ``result``; False (and nothing appended) once the answer is full."""
        if self.truncated:
            return False
        item = result.model_dump_json().encode()
        size = self.size + len(item) + (1 if self.parts else 0)
        if size > self.limit:
            self.truncated = True
            return False
        self.parts.append(item)
        self.size = size
        return True

    def body(self) -> bytes:
        """The answer, in one copy; the parts are let go."""
        pieces = [self._HEAD]
        for part in self.parts:
            pieces += (part, b",")
        if self.parts:
            pieces.pop()
        pieces.append(self._CUT_END if self.truncated else self._END)
        self.parts = []
        return b"".join(pieces)


def _check_filter(value: dict[str, Any] | None, limit: int) -> None:
    """422 for a filter longer than ``limit`` bytes as compact JSON."""
    if value is None:
        return
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limit:
        raise BodyError(422, f"the filter is {size} bytes as JSON; at most {limit}")
