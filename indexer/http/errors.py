"""The API's error handlers: every error a client can cause is ``{"error": "..."}``
with a fitting status, never a traceback (the package's exceptions, driver errors,
pydantic's validation errors and Starlette's own 404 and 405).  The /v1 routes' own
errors are in OpenAI's shape (:mod:`indexer.http.openai_errors`, which also rewrites
the others under /v1)."""

from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.exceptions import (
    DatabaseUnavailable,
    ExtensionMissing,
    IndexerError,
    InvalidInput,
    SchemaNotMigrated,
    SourceError,
    first_line,
)
from indexer.http.bodies import NOT_JSON
from indexer.http.openai_errors import OpenAIError, openai_error
from indexer.http.parse import BodyError, validation_message
from indexer.http.resources import Resources

logger = logging.getLogger(__name__)


def add_error_handlers(app: FastAPI, res: Resources) -> None:
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

    @app.exception_handler(OpenAIError)
    async def openai_request_error(request: Request, exc: OpenAIError) -> JSONResponse:
        body = openai_error(exc.status, str(exc), exc.param, exc.code)
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": f"database error: {first_line(exc)}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            # FastAPI then parsed no body at all: its "Field required" would mislead.
            message = NOT_JSON
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
