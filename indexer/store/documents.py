"""The daemon's operations on source documents: claim, read, replace, fail, back-fill.

A mixin of :class:`indexer.store.Store` (it runs the named queries through the Store's
own ``_execute``), kept apart so that the chunk queue and the document queue each read
as one piece.  Dynamic SQL on users' tables lives in migration 0005's functions
(``source_texts``, ``backfill_source``), which quote every identifier with
``format('%I')``; here every value is a bound parameter.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import errors
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from indexer.exceptions import IndexerError, SourceBusy, SourceError, first_line, stored_error
from indexer.store.protocol import Executes

#: Reading a user's table can fail for reasons of that table (dropped, a column renamed,
#: rights revoked, a statement timeout): any driver error that reaches here (a lost
#: connection has become DatabaseUnavailable already) is the source's, and its
#: documents fail with that line and are retried; the daemon goes on with the others.


@dataclass(frozen=True)
class ClaimedDocument:
    """A document leased to this daemon (its text is read after the claim)."""

    id: int
    source_id: int
    key: str
    version: int
    attempts: int


@dataclass(frozen=True)
class SourceText:
    key: str
    text: str
    metadata: dict[str, Any]


@dataclass
class ChunkWrite:
    """One chunk of a document's new set, with its vector."""

    position: int
    start: int
    end: int
    text: str
    hash: bytes
    embedding: np.ndarray = field(compare=False)
    reused: bool = False


@dataclass
class DocumentWrite:
    """A document's new chunk set (possibly empty), ready to replace the old one."""

    document: ClaimedDocument
    metadata: dict[str, Any]
    chunks: list[ChunkWrite]
    truncated: bool = False


def _source_name(store: Executes, source_id: int) -> str:
    """The source's name for a message (its id if it cannot be read: removed meanwhile,
    or the database went away)."""
    try:
        rows = store._execute("source_name", {"source": source_id})
    except (psycopg.Error, IndexerError):
        rows = []
    return str(rows[0]["name"]) if rows else f"#{source_id}"


class DocumentQueries:
    """The Store's document queue (see the module docstring)."""

    def apply_source_changes(self: Executes, batch: int = 10_000) -> int:
        """Apply up to ``batch`` of the changes the sources' triggers appended; how
        many it took (0: none, or another daemon is applying them)."""
        rows = self._execute("apply_source_changes", {"batch": batch})
        return int(rows[0]["applied"])

    def claim_documents(
        self: Executes, worker_id: uuid.UUID, limit: int, lease_seconds: float
    ) -> list[ClaimedDocument]:
        rows = self._execute(
            "claim_documents",
            {"worker_id": worker_id, "limit": limit, "lease_seconds": lease_seconds},
        )
        docs = [
            ClaimedDocument(r["id"], r["source_id"], r["doc_key"], r["version"], r["attempts"])
            for r in rows
        ]
        docs.sort(key=lambda d: d.id)
        return docs

    def source_texts(
        self: Executes, source_id: int, keys: Sequence[str], max_chars: int
    ) -> list[SourceText]:
        """The documents' current text, cut to ``max_chars`` characters (one more is
        read, so that a caller can tell a cut text); a deleted key is absent.  Raises
        SourceError when the table cannot be read (dropped, rights revoked)."""
        try:
            rows = self._execute(
                "source_texts", {"source": source_id, "keys": list(keys), "max_chars": max_chars}
            )
        except errors.LockNotAvailable as exc:
            # source_texts waits at most its lock_timeout for the table: never the daemon.
            name = _source_name(self, source_id)
            raise SourceBusy(f"the table of source {name} is locked: {first_line(exc)}") from None
        except psycopg.Error as exc:
            name = _source_name(self, source_id)
            raise SourceError(f"cannot read source {name}: {first_line(exc)}") from None
        return [SourceText(r["doc_key"], r["content"] or "", r["metadata"] or {}) for r in rows]

    def cached_vectors(
        self: Executes, cache_key: str, hashes: Sequence[bytes]
    ) -> dict[bytes, np.ndarray]:
        if not hashes:
            return {}
        rows = self._execute(
            "cached_vectors", {"cache_key": cache_key, "hashes": list(hashes)}, binary=True
        )
        return {bytes(r["hash"]): r["embedding"].to_numpy() for r in rows}

    def record_chunking(
        self: Executes, tokens: int, overlap: int
    ) -> tuple[int, int, datetime.datetime]:
        """The chunk settings documents are cut with: recorded now if none were (or
        replaced, while no passage exists yet); (tokens, overlap, recorded_at)."""
        row = self._one("record_chunking", {"tokens": tokens, "overlap": overlap, "replace": True})
        return int(row["tokens"]), int(row["overlap"]), row["recorded_at"]

    def recut_documents(self: Executes, tokens: int, overlap: int) -> int:
        """Record new chunk settings and queue every document again; how many."""
        return int(self._one("recut_documents", {"tokens": tokens, "overlap": overlap})["queued"])

    def replace_documents(
        self: Executes,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        writes: Sequence[DocumentWrite],
        *,
        model: str,
        cache_key: str | None,
        token_count: int,
        claim_ms: float,
        embed_ms: float,
        model_id: int | None = None,
        in_column: bool = True,
        max_chars: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> tuple[list[int], list[int], int]:
        """Replace the chunk sets of ``writes``' documents (guarded) and log the batch;
        return the ids of the documents written, of their new chunk rows, and how many
        of those reused a vector.  ``model_id``, ``in_column``: as for complete_batch
        (the new passages' vectors go to the model's table in the same transaction);
        ``detail``: more for the event's detail (a remote model's usage)."""
        chunks = [(w, c) for w in writes for c in w.chunks]
        vectors = [c.embedding for _, c in chunks]
        params = {
            "worker_id": worker_id,
            "batch_id": batch_id,
            "doc_ids": [w.document.id for w in writes],
            "versions": [w.document.version for w in writes],
            "chunk_counts": [len(w.chunks) for w in writes],
            "truncated": [w.truncated for w in writes],
            "chunk_docs": [w.document.id for w, _ in chunks],
            "positions": [c.position for _, c in chunks],
            "starts": [c.start for _, c in chunks],
            "ends": [c.end for _, c in chunks],
            "contents": [c.text for _, c in chunks],
            "metadata": [Jsonb(w.metadata) for w, _ in chunks],
            "embeddings": vectors,
            "hashes": [c.hash for _, c in chunks],
            "reused": [c.reused for _, c in chunks],
            "model": model,
            "cache_key": cache_key,
            "token_count": token_count,
            "claim_ms": claim_ms,
            "embed_ms": embed_ms,
            "model_id": model_id,
            "in_column": in_column,
            "detail": Jsonb(dict(detail or {})),
        }

        def passages_vectors(rows: list[DictRow]) -> list[tuple[str, dict[str, Any]]]:
            if in_column:
                return []
            at = {(w.document.id, c.position): c for w, c in chunks}
            added = [(int(i), at[(int(d), int(p))]) for i, d, p in rows[0]["added"]]
            return [
                (
                    "store_model_vectors",
                    {
                        "model_id": model_id,
                        "ids": [i for i, _ in added],
                        "versions": [1] * len(added),
                        "embeddings": [c.embedding for _, c in added],
                        "hashes": [c.hash for _, c in added],
                        "max_chars": max_chars,
                    },
                )
            ]

        row = self._execute_all([("replace_documents", params)], then=passages_vectors)[0][0]
        return list(row["documents"]), list(row["chunk_ids"]), row["reused_count"]

    def cache_vectors(
        self: Executes, cache_key: str, hashes: Sequence[bytes], vectors: Sequence[np.ndarray]
    ) -> None:
        if hashes:
            self._execute(
                "cache_vectors",
                {"cache_key": cache_key, "hashes": list(hashes), "embeddings": list(vectors)},
            )

    def forget_documents(
        self: Executes, worker_id: uuid.UUID, docs: Sequence[ClaimedDocument]
    ) -> list[int]:
        """Delete queued documents whose row no longer exists (guarded); their ids."""
        if not docs:
            return []
        rows = self._execute(
            "forget_documents",
            {
                "worker_id": worker_id,
                "ids": [d.id for d in docs],
                "versions": [d.version for d in docs],
            },
        )
        return sorted(r["id"] for r in rows)

    def fail_documents(
        self: Executes,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        failures: Sequence[tuple[ClaimedDocument, str]],
        *,
        max_attempts: int,
        retry_base_seconds: float,
        embed_ms: float = 0.0,
    ) -> list[int]:
        rows = self._execute(
            "fail_documents",
            {
                "worker_id": worker_id,
                "batch_id": batch_id,
                "ids": [d.id for d, _ in failures],
                "versions": [d.version for d, _ in failures],
                "errors": [stored_error(e, "indexing failed") for _, e in failures],
                "max_attempts": max_attempts,
                "retry_base_seconds": retry_base_seconds,
                "embed_ms": embed_ms,
            },
        )
        return list(rows[0]["documents"])

    def extend_document_lease(
        self: Executes, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float
    ) -> list[int]:
        if not ids:
            return []
        rows = self._execute(
            "extend_document_lease",
            {"worker_id": worker_id, "ids": list(ids), "lease_seconds": lease_seconds},
        )
        return sorted(r["id"] for r in rows)

    def release_documents(self: Executes, worker_id: uuid.UUID, ids: Sequence[int]) -> None:
        if ids:
            self._execute("release_documents", {"worker_id": worker_id, "ids": list(ids)})

    def defer_documents(
        self: Executes, worker_id: uuid.UUID, ids: Sequence[int], seconds: float
    ) -> None:
        """Documents of a locked table: pending again, due in ``seconds``, no attempt
        counted."""
        if ids:
            self._execute(
                "defer_documents", {"worker_id": worker_id, "ids": list(ids), "seconds": seconds}
            )

    def backfills_due(self: Executes) -> list[tuple[int, str]]:
        """Sources whose existing rows are not all queued yet: (id, name)."""
        return [(r["id"], r["name"]) for r in self._execute("backfills_due")]

    def backfill_source(self: Executes, source_id: int, batch: int) -> int | None:
        """Queue the next key range of a source's rows: the rows read, or None when its
        back-fill is done or another daemon is at it.  Raises SourceError when the table
        cannot be read."""
        try:
            rows = self._execute("backfill_source", {"source": source_id, "batch": batch})
        except errors.LockNotAvailable:
            return None  # an application is writing rows of this range: next step
        except psycopg.Error as exc:
            name = _source_name(self, source_id)
            raise SourceError(f"cannot back-fill source {name}: {first_line(exc)}") from None
        queued = rows[0]["queued"]
        return None if queued is None else int(queued)
