"""The FastAPI app: its middleware, its routes and their error handlers, put together.

The routes live by endpoint (:mod:`~indexer.http.health` for /health and /metrics,
:mod:`~indexer.http.embed`, :mod:`~indexer.http.search`, and
:mod:`~indexer.http.openai_api` for the OpenAI-compatible /v1 routes, whose errors are
in OpenAI's shape instead), the error handlers in
:mod:`~indexer.http.errors`: every error a client can cause is ``{"error": "..."}``
with a fitting status, never a traceback.

/embed and /search read their body as bytes on the event loop (already bounded by
:class:`~indexer.http.middleware.LimitBody`) and do everything else, parsing
included, in threads of their own (:mod:`indexer.http.parse`, :mod:`indexer.http.bodies`):
a large body never stalls /health.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from indexer.embedding import TextEmbedder
from indexer.exceptions import ConfigurationError
from indexer.http import console
from indexer.http.bodies import document_bodies
from indexer.http.bounds import HttpLimits
from indexer.http.docs import render as render_docs
from indexer.http.embed import add_embed
from indexer.http.errors import add_error_handlers
from indexer.http.health import add_health, add_metrics
from indexer.http.middleware import CatchAll, CountRequests, LimitBody, LimitRequests, RequireToken
from indexer.http.models import add_models
from indexer.http.openai_api import add_openai
from indexer.http.openai_errors import OpenAIShape
from indexer.http.resources import Resources
from indexer.http.schemas import EmbeddingsRequest, EmbedRequest, ErrorBody, SearchRequest
from indexer.http.search import add_search
from indexer.metrics import Metrics
from indexer.settings import Settings

#: The paths the request metrics name; any other path counts as "other".
ENDPOINTS = (
    "/health",
    "/metrics",
    "/embed",
    "/search",
    "/models",
    "/v1/embeddings",
    "/v1/models",
    *console.ENDPOINTS,
)


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
    res = Resources(dsn, settings.schema, embedder, metrics or Metrics(), limits, settings=settings)

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
    # Outside all of them: it rewrites their refusals too, under /v1/.
    app.add_middleware(OpenAIShape)
    app.add_middleware(CountRequests, metrics=res.metrics, endpoints=ENDPOINTS)
    add_error_handlers(app, res)
    add_health(app, res)
    add_metrics(app, res)
    add_embed(app, res)
    add_search(app, res)
    add_models(app, res)
    add_openai(app, res)
    document_bodies(app, EmbedRequest, SearchRequest, EmbeddingsRequest)
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
