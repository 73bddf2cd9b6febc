"""The JSON bodies of the HTTP API, as pydantic models.

They double as the OpenAPI schema, so each bound of :mod:`indexer.limits` is also
written into the schema (``maxItems``, ``maxLength``) for clients to read.  The counts
and lengths themselves are checked by the routes, to answer 413 rather than 422.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from indexer.http.bounds import HttpLimits
from indexer.limits import (
    CONTENT_CHARS,
    MAX_INPUTS,
    MAX_K,
    MAX_PASSAGES,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
)


class _Body(BaseModel):
    """A request body: a misspelt field is an error, not silently ignored, and types are
    strict (``"5"`` and ``true`` are not integers)."""

    model_config = ConfigDict(extra="forbid", strict=True)


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
        description="only rows whose metadata contains this JSON object (jsonb @>); "
        f"at most {HttpLimits.max_filter_bytes} bytes as compact JSON",
    )
    group: Literal["chunk", "document"] = Field(
        default="chunk",
        description='"chunk": the k nearest rows of chunks; "document": the k nearest '
        "documents of the sources (each scored by its best passage)",
    )
    source: str | None = Field(
        default=None, description='with "group": "document": only this source\'s documents'
    )
    passages: int = Field(
        default=3,
        ge=1,
        le=MAX_PASSAGES,
        description='with "group": "document": the best passages each document carries',
    )
    model: str | None = Field(
        default=None,
        max_length=100,
        description="the registered model whose vectors are searched (GET /models); "
        "default: the active one",
    )

    @model_validator(mode="after")
    def _document_options(self) -> SearchRequest:
        if self.group == "chunk":
            given = [f for f in ("source", "passages") if f in self.model_fields_set]
            if given:
                raise ValueError(f'"{given[0]}" goes with "group": "document"')
        return self

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
            _check_storable(text, "the filter", "jsonb")
        return value

    @field_validator("source")
    @classmethod
    def _storable_source(cls, value: str | None) -> str | None:
        """The source's name is a query parameter (text): the same two cases as the filter."""
        if value is not None:
            _check_storable(value, "the source", "PostgreSQL text")
        return value


def _check_storable(text: str, what: str, kind: str) -> None:
    """ValueError (a 422) for what PostgreSQL cannot take as text: a NUL character, and
    a lone surrogate (not UTF-8: the driver could not even send it)."""
    if "\x00" in text:
        raise ValueError(f"{what} holds a NUL character, which {kind} cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} holds invalid Unicode (a lone surrogate)") from None


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


_TRUNCATED = (
    "present, and true, only when results were left out so that the answer stays within "
    f"{HttpLimits.max_answer_bytes // (1024 * 1024)} MiB: the results given are the best, "
    "whole; ask for fewer (k, passages) to get them all"
)


class SearchResponse(BaseModel):
    results: list[SearchResult]
    truncated: bool = Field(default=False, description=_TRUNCATED)


class Passage(BaseModel):
    content: str
    score: float
    position: int
    char_start: int
    char_end: int


class DocumentResult(BaseModel):
    source: str
    key: str = Field(description="the document's key in its source table, as text")
    score: float = Field(description="the cosine similarity of its best passage")
    content: str = Field(description="its best passage")
    position: int = Field(description="the passage's place in the document, from 0")
    char_start: int = Field(description="where the passage starts in the document's text")
    char_end: int = Field(description="where it ends (exclusive; 0-based characters)")
    metadata: dict[str, Any]
    passages: list[Passage] = Field(description="its best passages, best first")


class DocumentSearchResponse(BaseModel):
    results: list[DocumentResult]
    truncated: bool = Field(default=False, description=_TRUNCATED)


class Health(BaseModel):
    status: str = Field(description='"ok", or "unavailable" (with status code 503)')
    reason: str | None
    database_reachable: bool
    schema_migrated: bool
    model_loaded: bool
    model: str
    dim: int
    backlog: int | None = Field(
        description="rows pending or in flight (rows inserted into chunks, not passages)"
    )
    pending: int | None
    failed: int | None = Field(description="rows parked as failed")
    oldest_pending_age_seconds: float | None
    documents_backlog: int | None = Field(
        default=None, description="documents of the sources pending or in flight"
    )
    documents_failed: int | None = Field(
        default=None, description="documents of the sources parked as failed"
    )
    search_role: str | None = Field(
        default=None,
        description="the database role searches run as: they find the passages it may read",
    )
    servers_away: list[str] = Field(
        default_factory=list,
        description="remote models whose server is away (busy or down): their work waits, "
        "nothing is lost; `indexer models list` says since when and why",
    )


class ErrorBody(BaseModel):
    error: str


# -- /v1: the OpenAI-compatible routes (indexer.http.openai_api) -------------------------


class EmbeddingsRequest(_Body):
    """The body of ``POST /v1/embeddings``, as OpenAI's embeddings API defines it.

    Token-id arrays are in the type only so that they are refused with a message of
    their own (this server takes text), not with a type error.
    """

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description=f"a text, or at most {MAX_INPUTS} texts, none empty, of at most "
        f"{MAX_TEXT_CHARS} characters each (token-id arrays are refused)",
        json_schema_extra={"maxItems": MAX_INPUTS},
    )
    model: str | None = Field(
        default=None,
        max_length=100,
        description="a registered model's name (GET /v1/models); default: the active one",
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description='"float": JSON numbers (7 decimals); "base64": the float32 vector\'s '
        "little-endian bytes, base64-encoded (exact)",
    )
    dimensions: int | None = Field(
        default=None, description="if given, must be the model's dimension (no shortening)"
    )
    user: str | None = Field(default=None, description="accepted and ignored")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="numbers, or base64 (encoding_format)")


class Usage(BaseModel):
    prompt_tokens: int = Field(
        description="tokens the model read: after truncation, the document prefix and "
        "the special tokens ([CLS], [SEP]) included"
    )
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str = Field(description="the registered model's name")
    object: Literal["model"] = "model"
    created: int = Field(description="when it was registered (Unix time)")
    owned_by: str = "indexer"


class ModelCards(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description='"invalid_request_error" (4xx) or "server_error" (5xx)')
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail
