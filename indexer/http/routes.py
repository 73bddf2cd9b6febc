"""The FastAPI app: /health, /metrics, /embed and /search, and its error handlers.

Every error a client can cause is ``{"error": "..."}`` with a fitting status, never a
traceback: the handlers below map the package's exceptions, driver errors, pydantic's
validation errors and Starlette's own (404, 405) onto that one shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.embedding import TextEmbedder
from indexer.exceptions import (
    DatabaseUnavailable,
    ExtensionMissing,
    IndexerError,
    InvalidInput,
    SchemaNotMigrated,
    first_line,
)
from indexer.http.middleware import CatchAll, CountRequests, LimitBody
from indexer.http.resources import Resources
from indexer.http.schemas import (
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
ENDPOINTS = ("/health", "/metrics", "/embed", "/search")

#: The error bodies the OpenAPI schema lists for /embed and /search.
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (413, 422, 503)}


def create_app(
    settings: Settings, *, dsn: str, embedder: TextEmbedder, metrics: Metrics | None = None
) -> FastAPI:
    """The API over ``dsn``; its connections close when the app shuts down."""
    res = Resources(dsn, settings.schema, embedder, metrics or Metrics())

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
    )
    # HttpServer.stop closes them too, in case a forced exit skipped the lifespan's end.
    app.state.indexer = res
    app.add_middleware(LimitBody)
    app.add_middleware(CatchAll)
    app.add_middleware(CountRequests, metrics=res.metrics, endpoints=ENDPOINTS)
    _add_error_handlers(app)
    _add_health(app, res)
    _add_metrics(app, res)
    _add_embed(app, res)
    _add_search(app, res)
    return app


# -- errors ---------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(IndexerError)
    async def indexer_error(request: Request, exc: IndexerError) -> JSONResponse:
        status = _status_code(exc)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": f"database error: {first_line(exc)}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            # FastAPI then parsed no body at all: its "Field required" would mislead.
            message = "send a JSON body with the header Content-Type: application/json"
        else:
            message = _validation_message(exc)
        return JSONResponse({"error": message}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )


def _status_code(exc: IndexerError) -> int:
    if isinstance(exc, DatabaseUnavailable | SchemaNotMigrated | ExtensionMissing):
        return 503
    if isinstance(exc, InvalidInput):
        return 422
    return 500


def _validation_message(exc: RequestValidationError) -> str:
    """pydantic's errors in one line: the first five, each with where it is."""
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
        except DatabaseUnavailable as exc:
            reason = str(exc)
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
        """Prometheus metrics; the backlog gauges are read from the database first."""
        try:
            res.metrics.observe_status(await res.probe.status())
            res.metrics.database_up.set(1)
        except (IndexerError, psycopg.Error) as exc:
            logger.debug("metrics: database gauges not refreshed: %s", exc)
            res.metrics.database_up.set(0)
        return Response(res.metrics.render(), media_type=CONTENT_TYPE)


# -- /embed and /search ---------------------------------------------------------------
# Plain functions, not coroutines: FastAPI runs them in its thread pool, so a model
# call or a query does not stop the event loop from answering /health meanwhile.


def _add_embed(app: FastAPI, res: Resources) -> None:
    @app.post(
        "/embed",
        response_model=EmbedTextsResponse | EmbedChunksResponse,
        responses=_ERRORS,
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
    @app.post("/search", response_model=SearchResponse, responses=_ERRORS)
    def search(body: SearchRequest) -> SearchResponse:
        """The k embedded rows nearest to the query (cosine), best first."""
        _check_texts([body.query], "query")
        vector = res.embed([body.query])[0]
        hits = res.store.search(
            vector, body.k, metadata_filter=body.filter, max_chars=CONTENT_CHARS
        )
        return SearchResponse(
            results=[
                SearchResult(id=h.id, score=h.score, content=h.content, metadata=h.metadata)
                for h in hits
            ]
        )
