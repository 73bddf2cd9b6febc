"""The daemon's chunk queue: claim rows, write their vectors or failures (guarded),
keep and release leases, log events.

A mixin of :class:`indexer.store.Store` (it runs the named queries through the Store's
own ``_execute``), as :mod:`indexer.store.documents` is for the document queue.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.exceptions import stored_error
from indexer.store.protocol import Executes


@dataclass(frozen=True)
class ClaimedRow:
    """A row leased to this daemon: the text the model reads (cut to max_chars), its
    sha256 (the vector cache's key), and the cached vector when there is one."""

    id: int
    content_version: int
    content: str
    attempts: int
    hash: bytes | None = None
    cached: np.ndarray | None = field(default=None, compare=False)


class ChunkQueries:
    """The Store's chunk queue (see the module docstring)."""

    def claim(
        self: Executes,
        worker_id: uuid.UUID,
        limit: int,
        lease_seconds: float,
        max_chars: int,
        cache_key: str | None = None,
    ) -> list[ClaimedRow]:
        """Lease up to ``limit`` rows; each with its hash and, when the cache under
        ``cache_key`` (None: no cache) holds one, its cached vector."""
        rows = self._execute(
            "claim",
            {
                "worker_id": worker_id,
                "limit": limit,
                "lease_seconds": lease_seconds,
                "max_chars": max_chars,
                "cache_key": cache_key,
            },
            binary=True,  # cached vectors in pgvector's binary format: no text parsing
        )
        claimed = [
            ClaimedRow(
                r["id"],
                r["content_version"],
                r["content"],
                r["attempts"],
                bytes(r["hash"]),
                None if r["cached"] is None else r["cached"].to_numpy(),
            )
            for r in rows
        ]
        claimed.sort(key=lambda r: r.id)
        return claimed

    def complete_batch(
        self: Executes,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        rows: Sequence[ClaimedRow],
        embeddings: np.ndarray,
        *,
        model: str,
        token_count: int,
        claim_ms: float,
        embed_ms: float,
        reused: Sequence[bool] | None = None,
        cache_key: str | None = None,
    ) -> list[int]:
        """Write vectors (guarded) and the batch_completed event; return the ids written.

        ``reused[i]``: row i's vector came from the cache (or from an equal text of the
        same claim) and cost no model call; the others enter the cache under
        ``cache_key`` (None: the cache is off).
        """
        row = self._one(
            "complete_batch",
            {
                "worker_id": worker_id,
                "batch_id": batch_id,
                "ids": [r.id for r in rows],
                "versions": [r.content_version for r in rows],
                "embeddings": list(embeddings),
                "hashes": [r.hash for r in rows],
                "reused": list(reused) if reused is not None else [False] * len(rows),
                "cache_key": cache_key,
                "model": model,
                "token_count": token_count,
                "claim_ms": claim_ms,
                "embed_ms": embed_ms,
            },
        )
        return list(row["chunk_ids"])

    def fail_rows(
        self: Executes,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        failures: Sequence[tuple[ClaimedRow, str]],
        *,
        max_attempts: int,
        retry_base_seconds: float,
        embed_ms: float,
    ) -> list[int]:
        """Record failed rows (retry later or park) and a batch_failed event."""
        row = self._one(
            "fail_rows",
            {
                "worker_id": worker_id,
                "batch_id": batch_id,
                "ids": [r.id for r, _ in failures],
                "versions": [r.content_version for r, _ in failures],
                "errors": [stored_error(e, "embedding failed") for _, e in failures],
                "max_attempts": max_attempts,
                "retry_base_seconds": retry_base_seconds,
                "embed_ms": embed_ms,
            },
        )
        return list(row["chunk_ids"])

    def extend_lease(
        self: Executes, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float
    ) -> list[int]:
        """Renew the leases of ``ids``; return those this daemon still holds."""
        if not ids:
            return []
        rows = self._execute(
            "extend_lease",
            {"worker_id": worker_id, "ids": list(ids), "lease_seconds": lease_seconds},
        )
        return sorted(r["id"] for r in rows)

    def release(self: Executes, worker_id: uuid.UUID, ids: Sequence[int]) -> None:
        if ids:
            self._execute("release", {"worker_id": worker_id, "ids": list(ids)})

    def record_event(
        self: Executes,
        kind: str,
        worker_id: uuid.UUID,
        *,
        batch_id: uuid.UUID | None = None,
        row_count: int = 0,
        token_count: int = 0,
        chunk_ids: Sequence[int] = (),
        error: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._execute(
            "insert_event",
            {
                "kind": kind,
                "worker_id": worker_id,
                "batch_id": batch_id,
                "row_count": row_count,
                "token_count": token_count,
                "chunk_ids": list(chunk_ids),
                "error": error,
                "detail": json.dumps(detail or {}),
            },
        )

    def insert_chunks(
        self: Executes, contents: Sequence[str], metadata: Sequence[str]
    ) -> list[int]:
        rows = self._execute(
            "insert_chunks", {"contents": list(contents), "metadata": list(metadata)}
        )
        return [r["id"] for r in rows]
