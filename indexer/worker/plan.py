"""A claim of documents on its way through the model: each document cut into chunks
(:func:`indexer.chunking.chunk_text`) and hashed, and the vectors its chunks have so far.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.chunking import chunk_text
from indexer.embedding import TextEmbedder
from indexer.embedding.remote import Usage
from indexer.settings import Settings
from indexer.store.documents import ClaimedDocument, SourceText


@dataclass
class Planned:
    """A claimed document, chunked, waiting for its chunks' vectors."""

    document: ClaimedDocument
    metadata: dict[str, Any]
    chunks: list[tuple[int, int, int, str, bytes]]  # position, start, end, text, hash
    tokens: dict[bytes, int]
    truncated: bool


@dataclass
class Round:
    """One claim of documents on its way through the model."""

    planned: list[Planned]
    vectors: dict[bytes, np.ndarray]
    cached: set[bytes]
    #: hashes embedded in this round and not yet written to the cache by a write.
    fresh: set[bytes] = field(default_factory=set)
    bad: dict[bytes, str] = field(default_factory=dict)
    claim_ms: float = 0.0
    embed_ms: float = 0.0
    tokens: int = 0
    #: What a remote model's server reported since the last write (None: local model).
    usage: Usage | None = None


def plan(
    doc: ClaimedDocument, source: SourceText, settings: Settings, embedder: TextEmbedder
) -> Planned:
    """Cut a document's text into its chunks, each with its hash (the vector cache's
    key) and its token count."""
    s = settings
    text = source.text
    truncated = len(text) > s.document_max_chars
    if truncated:
        text = text[: s.document_max_chars]
    chunking = chunk_text(
        text,
        embedder,
        chunk_tokens=s.chunk_tokens,
        overlap_tokens=s.chunk_overlap,
        max_chunks=s.document_max_chunks,
        max_chars=s.chunk_max_chars,
    )
    chunks = []
    tokens: dict[bytes, int] = {}
    for position, chunk in enumerate(chunking.chunks):
        digest = hashlib.sha256(chunk.text[: s.max_chars].encode("utf-8")).digest()
        chunks.append((position, chunk.start, chunk.end, chunk.text, digest))
        tokens[digest] = chunk.tokens + 2
    return Planned(doc, source.metadata, chunks, tokens, truncated or chunking.truncated)


def misses(run: Round) -> list[bytes]:
    """Hashes still without a vector, each once, in document order (so documents
    complete, and are written, one after another)."""
    seen: set[bytes] = set()
    order = []
    for p in run.planned:
        for *_, digest in p.chunks:
            if digest not in run.vectors and digest not in seen:
                seen.add(digest)
                order.append(digest)
    return order
