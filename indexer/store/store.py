"""Every operation on the chunks and events tables, and nothing else.

The only module that executes the named queries of ``indexer/sql/queries.sql``.  One
Store owns one connection, opened lazily and reopened after the database comes back:
a call made while the database is away raises :class:`DatabaseUnavailable` and the
next call reconnects.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import numpy as np
import psycopg
from psycopg.rows import DictRow

from indexer.db import connect as db
from indexer.db.migrate import check_schema
from indexer.exceptions import DatabaseUnavailable
from indexer.store.queries import QUERIES

NOTIFY_CHANNEL = "indexer_chunks"


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    content_version: int
    content: str
    attempts: int


@dataclass(frozen=True)
class SearchHit:
    id: int
    score: float
    content: str
    metadata: dict[str, Any]


class Store:
    def __init__(self, dsn: str, schema: str, *, check: bool = True) -> None:
        self.dsn = dsn
        self.schema = schema
        self._check = check
        self._conn: db.Connection | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._pgvector: tuple[int, ...] | None = None
        self._search_settings: dict[str, int] = {}  # per connection

    # -- connection ----------------------------------------------------------------

    def connection(self) -> db.Connection:
        if self._conn is None or self._conn.closed:
            conn = db.connect(self.dsn, self.schema, autocommit=True)
            try:
                if self._check:
                    check_schema(conn, self.schema)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._search_settings = {}
        return self._conn

    def close(self) -> None:
        for conn in (self._conn, self._listener):
            if conn is not None:
                conn.close()
        self._conn = self._listener = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, name: str, params: dict[str, Any] | None = None) -> psycopg.Cursor[DictRow]:
        query: LiteralString = QUERIES[name]
        conn = self.connection()
        try:
            with db.wrap_errors(f"running {name}"):
                return conn.execute(query, params)
        except DatabaseUnavailable:
            self._drop()
            raise

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._search_settings = {}

    # -- the daemon's queue --------------------------------------------------------

    def claim(
        self, worker_id: uuid.UUID, limit: int, lease_seconds: float, max_chars: int
    ) -> list[ClaimedRow]:
        rows = self._execute(
            "claim",
            {
                "worker_id": worker_id,
                "limit": limit,
                "lease_seconds": lease_seconds,
                "max_chars": max_chars,
            },
        ).fetchall()
        claimed = [
            ClaimedRow(r["id"], r["content_version"], r["content"], r["attempts"]) for r in rows
        ]
        claimed.sort(key=lambda r: r.id)
        return claimed

    def complete_batch(
        self,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        rows: Sequence[ClaimedRow],
        embeddings: np.ndarray,
        *,
        model: str,
        token_count: int,
        claim_ms: float,
        embed_ms: float,
    ) -> list[int]:
        """Write vectors (guarded) and the batch_completed event; return the ids written."""
        row = self._execute(
            "complete_batch",
            {
                "worker_id": worker_id,
                "batch_id": batch_id,
                "ids": [r.id for r in rows],
                "versions": [r.content_version for r in rows],
                "embeddings": list(embeddings),
                "model": model,
                "token_count": token_count,
                "claim_ms": claim_ms,
                "embed_ms": embed_ms,
            },
        ).fetchone()
        assert row is not None
        return list(row["chunk_ids"])

    def fail_rows(
        self,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        failures: Sequence[tuple[ClaimedRow, str]],
        *,
        max_attempts: int,
        retry_base_seconds: float,
        embed_ms: float,
    ) -> list[int]:
        """Record failed rows (retry later or park) and a batch_failed event."""
        row = self._execute(
            "fail_rows",
            {
                "worker_id": worker_id,
                "batch_id": batch_id,
                "ids": [r.id for r, _ in failures],
                "versions": [r.content_version for r, _ in failures],
                "errors": [_clean_error(e) for _, e in failures],
                "max_attempts": max_attempts,
                "retry_base_seconds": retry_base_seconds,
                "embed_ms": embed_ms,
            },
        ).fetchone()
        assert row is not None
        return list(row["chunk_ids"])

    def extend_lease(self, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float) -> None:
        if ids:
            self._execute(
                "extend_lease",
                {"worker_id": worker_id, "ids": list(ids), "lease_seconds": lease_seconds},
            )

    def release(self, worker_id: uuid.UUID, ids: Sequence[int]) -> None:
        if ids:
            self._execute("release", {"worker_id": worker_id, "ids": list(ids)})

    def record_event(
        self,
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

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a NOTIFY about new or changed rows.

        True when one arrived, and also right after LISTEN starts (or restarts after an
        outage): a row committed before that sent its NOTIFY to nobody, so the caller
        must look once more.
        """
        if self._listener is None or self._listener.closed:
            with db.wrap_errors("listening for notifications"):
                listener = db.connect(self.dsn, self.schema, autocommit=True, vector=False)
                listener.execute("LISTEN " + NOTIFY_CHANNEL)
            self._listener = listener
            return True
        try:
            with db.wrap_errors("waiting for notifications"):
                for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                    return True
        except DatabaseUnavailable:
            self._listener.close()
            self._listener = None
            raise
        return False

    def insert_chunks(self, contents: Sequence[str], metadata: Sequence[str]) -> list[int]:
        rows = self._execute(
            "insert_chunks", {"contents": list(contents), "metadata": list(metadata)}
        )
        return [r["id"] for r in rows.fetchall()]

    # -- reading -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        row = self._execute("status").fetchone()
        assert row is not None
        return dict(row)

    def queue_status(self) -> dict[str, Any]:
        """pending, in_flight, backlog, failed, oldest_pending_age: cheap at any table size."""
        row = self._execute("queue_status").fetchone()
        assert row is not None
        return dict(row)

    def failed_rows(self, limit: int = 20) -> list[dict[str, Any]]:
        return [dict(r) for r in self._execute("failed_rows", {"limit": limit}).fetchall()]

    def retry_failed(self, ids: Sequence[int] | None = None) -> list[int]:
        rows = self._execute("retry_failed", {"ids": None if ids is None else list(ids)})
        return [r["id"] for r in rows.fetchall()]

    def prune_events(self, older_than_seconds: float) -> int:
        row = self._execute("prune_events", {"older_than_seconds": older_than_seconds}).fetchone()
        assert row is not None
        return int(row["pruned"])

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        metadata_filter: dict[str, Any] | None = None,
        max_chars: int = 1000,
    ) -> list[SearchHit]:
        # ef_search bounds how many rows one HNSW scan can return; keep it >= k.  The
        # settings stay on the connection, so they are sent only when they change.
        ef_search = max(100, k)
        if self._search_settings.get("ef_search") != ef_search:
            self._execute("search_settings", {"ef_search": str(ef_search)})
            self._search_settings["ef_search"] = ef_search
        if (
            metadata_filter
            and "iterative" not in self._search_settings
            and self.pgvector_version() >= (0, 8)
        ):
            self._execute("search_iterative")
            self._search_settings["iterative"] = 1
        rows = self._execute(
            "search",
            {
                "query": query,
                "k": k,
                "filter": json.dumps(metadata_filter or {}),
                "max_chars": max_chars,
            },
        ).fetchall()
        return [SearchHit(r["id"], float(r["score"]), r["content"], r["metadata"]) for r in rows]

    def pgvector_version(self) -> tuple[int, ...]:
        if self._pgvector is None:
            row = self._execute("pgvector_version").fetchone()
            version = "0" if row is None else str(row["extversion"])
            self._pgvector = db.parse_version(version)
        return self._pgvector


def _clean_error(message: str) -> str:
    """One line, bounded, and free of NUL bytes (which text columns reject)."""
    line = message.replace("\x00", "").strip().splitlines()
    return (line[0] if line else "embedding failed")[:500]
