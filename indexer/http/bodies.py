"""What /embed and /search share: each reads its JSON body itself (on the event loop,
bounded by :class:`~indexer.http.middleware.LimitBody`) and hands it to a thread of
its endpoint's own limiter, so parsing, the model call and the query never run on the
event loop, and neither endpoint can take the other's threads.  Here: the checks on
such a body, and its OpenAPI description (FastAPI does not see it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from indexer.http.parse import BodyError
from indexer.http.schemas import ErrorBody
from indexer.limits import MAX_TEXT_CHARS, MAX_TEXTS

#: The error bodies the OpenAPI schema lists for /embed and /search.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 408, 413, 422, 503)
}

NOT_JSON = "send a JSON body with the header Content-Type: application/json"


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def document_bodies(app: FastAPI, *models: type[BaseModel]) -> None:
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


def check_texts(texts: Sequence[str], noun: str, most: int = MAX_TEXTS) -> None:
    """413 for more texts than ``most``, or longer ones, than one request may carry."""
    if len(texts) > most:
        raise HTTPException(413, f"{len(texts)} {noun}s in one request; at most {most}")
    for i, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise HTTPException(
                413, f"{noun} {i} has {len(text)} characters; at most {MAX_TEXT_CHARS}"
            )


def require_json(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise BodyError(422, NOT_JSON)
