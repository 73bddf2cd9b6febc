"""/embed: vectors for texts, or for chunks echoing their ids; no database involved."""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Request
from fastapi.responses import Response

from indexer.http.bodies import ERRORS, body_schema, check_texts, require_json
from indexer.http.parse import parse_body
from indexer.http.resources import Resources
from indexer.http.schemas import EmbedChunksResponse, EmbedRequest, EmbedTextsResponse


def add_embed(app: FastAPI, res: Resources) -> None:
    @app.post(
        "/embed",
        response_model=EmbedTextsResponse | EmbedChunksResponse,
        responses=ERRORS,
        openapi_extra=body_schema(EmbedRequest),
    )
    async def embed(request: Request) -> Response:
        """Vectors for texts (or for chunks, echoing their ids); no database involved."""
        require_json(request)
        raw = await request.body()
        work = functools.partial(_embed, res, raw)
        return await anyio.to_thread.run_sync(work, limiter=res.embed_threads)


def _embed(res: Resources, raw: bytes) -> Response:
    body = parse_body(raw, EmbedRequest, res.limits)
    del raw
    if body.chunks is not None:
        check_texts([c.content for c in body.chunks], "chunk")
        vectors = rounded(res.embed([c.content for c in body.chunks]))
        out: dict[str, Any] = {
            "batch_id": body.batch_id,
            "chunks": [
                {"chunk_id": c.chunk_id, "embedding": v}
                for c, v in zip(body.chunks, vectors, strict=True)
            ],
        }
    else:
        assert body.texts is not None  # the body's validator allows no third shape
        check_texts(body.texts, "text")
        out = {"embeddings": rounded(res.embed(body.texts))}
    out.update(model=res.embedder.name, dim=res.embedder.dim)
    # Serialized here, not through response_model: no pydantic pass over every float
    # (up to 256 x 384 of them).
    return Response(json.dumps(out), media_type="application/json")


def rounded(vectors: npt.NDArray[np.float32]) -> list[list[float]]:
    """Seven decimals (the CLI's precision) in short JSON numbers; /v1/embeddings writes
    its float vectors the same way."""
    result: list[list[float]] = np.round(vectors.astype(np.float64), 7).tolist()
    return result
