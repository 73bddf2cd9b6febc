"""``POST /v1/embeddings`` and ``GET /v1/models``: the registered models behind the
request and answer shapes of OpenAI's embeddings API, so that its official clients (and
the libraries built on them) embed with the local model, with no API key and no text
leaving the host.

**Document vectors.**  OpenAI's API does not tell a query from a document, so every
input gets the vector the daemon writes for a row of that text: the model's document
prefix, if it has one (the packaged all-MiniLM-L6-v2 has none, so its queries and
documents are the same vectors).  For a model with a query prefix, embed queries
through ``POST /search`` (which applies it), or add the prefix to the text yourself.

**Tokens.**  ``usage`` counts the tokens the model read of each input: after
truncation to its max tokens, the document prefix and the special tokens ([CLS],
[SEP]) included.

**Bounds.**  The body goes through the same middlewares as /embed's (token, body size,
memory budget, request limit), is parsed by :func:`~indexer.http.parse.parse_body` in
/embed's threads, and the model runs within the same model-call slots; only the
registry lookup (the database) runs in /search's threads, so a hung database never
takes the threads /embed needs.  At most :data:`~indexer.limits.MAX_INPUTS` inputs (the
bound of the API imitated); the embedder groups them into model calls by its token
budget, so 2,048 texts hold no more model memory than 256.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Request
from fastapi.responses import Response

from indexer.embedding import TextEmbedder
from indexer.embedding.remote import RemoteEmbedder
from indexer.exceptions import InvalidInput
from indexer.http.bodies import body_schema, check_texts, require_json
from indexer.http.embed import rounded
from indexer.http.openai_errors import OpenAIError
from indexer.http.parse import BodyError, parse_body
from indexer.http.resources import Resources
from indexer.http.schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelCard,
    ModelCards,
    OpenAIErrorBody,
)
from indexer.limits import MAX_INPUTS

#: The error bodies the OpenAPI schema lists for the /v1 routes.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorBody} for code in (400, 401, 404, 408, 413, 500, 503)
}

TOKEN_IDS = (
    "input holds token ids: this server takes text only (a string or a list of strings); "
    "LangChain users: set check_embedding_ctx_length=False"
)

#: A body whose input starts as token ids (``[1, ...`` or ``[[1, ...``): looked for only
#: when the body was refused before parsing, so that the refusal still says why.
_TOKEN_IDS = re.compile(rb'"input"\s*:\s*\[\s*(?:\[\s*)?-?\d')


@dataclass(frozen=True)
class _Request:
    """A checked body: its texts and options."""

    texts: list[str]
    model: str | None
    base64: bool
    dimensions: int | None


def add_openai(app: FastAPI, res: Resources) -> None:
    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        responses=ERRORS,
        openapi_extra=body_schema(EmbeddingsRequest),
    )
    async def embeddings(request: Request) -> Response:
        """Document vectors of the inputs, in OpenAI's embeddings API shape (its clients
        work with any key when no token is set); errors in its shape too."""
        try:
            require_json(request)
        except BodyError as exc:
            raise _refused(exc) from None
        raw = await request.body()
        body = await anyio.to_thread.run_sync(
            functools.partial(_parse, res, raw), limiter=res.embed_threads
        )
        del raw
        embedder, name = await anyio.to_thread.run_sync(
            functools.partial(_model, res, body.model), limiter=res.search_threads
        )
        work = functools.partial(_embed, res, body, embedder, name)
        return await anyio.to_thread.run_sync(work, limiter=res.embed_threads)

    @app.get("/v1/models", response_model=ModelCards, responses=ERRORS)
    async def models() -> ModelCards:
        """The registered models that run here (not the remote ones), in OpenAI's
        model-list shape (``id`` is the name a request's ``model`` gives); details in
        ``GET /models``."""
        rows = await anyio.to_thread.run_sync(res.store.models, limiter=res.search_threads)
        return ModelCards(
            data=[
                ModelCard(id=m.name, created=int(m.created_at.timestamp()))
                for m in rows
                if m.kind == "local"
            ]
        )


def _refused(exc: BodyError) -> OpenAIError:
    """A body refused by the shared parser: 400 as OpenAI answers an invalid request
    (the parser's 422), its other statuses (413) as they are."""
    return OpenAIError(400 if exc.status == 422 else exc.status, str(exc))


def _parse(res: Resources, raw: bytes) -> _Request:
    try:
        body = parse_body(raw, EmbeddingsRequest, res.limits)
    except BodyError as exc:
        if exc.status == 413 and _TOKEN_IDS.search(raw):
            raise OpenAIError(400, TOKEN_IDS, param="input") from None
        raise _refused(exc) from None
    texts = _texts(body.input)
    check_texts(texts, "input", most=MAX_INPUTS)
    return _Request(texts, body.model, body.encoding_format == "base64", body.dimensions)


def _texts(given: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]) -> list[str]:
    """The inputs as a list of texts; 400 for none, an empty one, too many, or token ids."""
    if isinstance(given, str):
        given = [given]
    if not given:
        raise OpenAIError(400, "input is empty: give a text or a list of texts", param="input")
    texts: list[str] = []
    for item in given:
        if not isinstance(item, str):
            raise OpenAIError(400, TOKEN_IDS, param="input")
        texts.append(item)
    if len(texts) > MAX_INPUTS:
        raise OpenAIError(
            400, f"input holds {len(texts)} texts; at most {MAX_INPUTS}", param="input"
        )
    empty = next((i for i, text in enumerate(texts) if not text), None)
    if empty is not None:
        where = "input" if len(texts) == 1 else f"input[{empty}]"
        raise OpenAIError(400, f"{where} is an empty string", param="input")
    return texts


def _model(res: Resources, model: str | None) -> tuple[TextEmbedder, str]:
    """The local model a request names (None: the active one).  A remote model is
    refused: this endpoint serves what runs here, it does not pass text on to another
    server (nor its costs to whoever may call this one)."""
    try:
        embedder, name = res.embedder_for(model)
    except InvalidInput as exc:
        raise OpenAIError(404, str(exc), param="model", code="model_not_found") from None
    if isinstance(embedder, RemoteEmbedder):
        which = "the active model" if model is None else "model"
        raise OpenAIError(
            400,
            f"{which} {name!r} is a remote model: ask its own server; this endpoint serves "
            "the models that run here (GET /v1/models)",
            param="model",
        )
    return embedder, name


def _embed(res: Resources, body: _Request, embedder: TextEmbedder, name: str) -> Response:
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise OpenAIError(
            400,
            f"model {name} makes {embedder.dim}-dimensional vectors: dimensions must be "
            f"{embedder.dim}, or left out",
            param="dimensions",
        )
    vectors, tokens = res.embed_documents(embedder, body.texts)
    encoded = _base64(vectors) if body.base64 else rounded(vectors)
    used = sum(tokens)
    out = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(encoded)
        ],
        "model": name,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
    # Serialized here, not through response_model: no pydantic pass over every float
    # (up to 2,048 x 384 of them).
    return Response(json.dumps(out), media_type="application/json")


def _base64(vectors: npt.NDArray[np.float32]) -> list[str]:
    """Each vector's float32 values as little-endian bytes, base64-encoded (what
    OpenAI's clients decode), exact where the JSON numbers are rounded."""
    little = np.ascontiguousarray(vectors, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
