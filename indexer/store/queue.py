"""The daemon's chunk queue: claim rows, write their vectors or failures (guarded),
keep and release leases, log events.

A mixin of :class:`indexer.store.Store` (it runs the named queries through the Store's
own ``_execute``), as :mod:`indexer.store.documents` is for the document queue.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

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


def claimed_rows(rows: Sequence[DictRow]) -> list[ClaimedRow]:
    """The rows of a claim (``claim``, ``claim_model_work``), by id."""
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


def _model_vectors(
    model_id: int | None, params: dict[str, Any], max_chars: int | None
) -> dict[str, Any]:
    """store_model_vectors' parameters for a batch's rows: every row at the version
    read (a vector is right for its text, whichever daemon's write of the row won)."""
    if model_id is None:
        raise ValueError("vectors kept outside chunks.embedding need their model's id")
    keys = ("ids", "versions", "embeddings", "hashes")
    return {"model_id": model_id, "max_chars": max_chars, **{k: params[k] for k in keys}}


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
        return claimed_rows(rows)

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
        model_id: int | None = None,
        in_column: bool = True,
        max_chars: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Write vectors (guarded) and the batch_completed event; return the ids written.

        ``reused[i]``: row i's vector came from the cache (or from an equal text of the
        same claim) and cost no model call; the others enter the cache under
        ``cache_key`` (None: the cache is off).  ``model_id``: the registered model that
        computed them (every other model is queued to embed the rows too); its vectors
        go to ``chunks.embedding`` when ``in_column``, else to its table, in the same
        transaction (for rows whose first ``max_chars`` characters are still the text
        read).  ``detail``: more for the event's detail (a remote model's usage).
        """
        params = {
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
            "model_id": model_id,
            "in_column": in_column,
            "detail": Jsonb(dict(detail or {})),
        }
        steps: list[tuple[str, dict[str, Any]]] = [("complete_batch", params)]
        if not in_column:
            steps.append(("store_model_vectors", _model_vectors(model_id, params, max_chars)))
        row = self._execute_all(steps)[0][0]
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
