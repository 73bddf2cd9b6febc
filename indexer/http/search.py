"""/search: the rows, or the documents, nearest to a query, in an answer of bounded
size."""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from indexer.exceptions import DatabaseUnavailable
from indexer.http.bodies import ERRORS, body_schema, check_texts, require_json
from indexer.http.parse import BodyError, parse_body
from indexer.http.resources import Resources
from indexer.http.schemas import (
    DocumentResult,
    DocumentSearchResponse,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from indexer.limits import CONTENT_CHARS


def add_search(app: FastAPI, res: Resources) -> None:
    @app.post(
        "/search",
        response_model=SearchResponse | DocumentSearchResponse,
        responses=ERRORS,
        openapi_extra=body_schema(SearchRequest),
    )
    async def search(request: Request) -> Response:
        """The k embedded rows nearest to the query (cosine), best first; with
        ``"group": "document"``, the k nearest documents of the sources instead."""
        require_json(request)
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
    check_texts([body.query], "query")
    vector, model = res.embed_query(body.query, body.model)
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
                model=model,
                take=lambda d: answer.add(DocumentResult.model_validate(d, from_attributes=True)),
            )
        else:
            hits = res.store.search(
                vector, body.k, metadata_filter=body.filter, max_chars=CONTENT_CHARS, model=model
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
