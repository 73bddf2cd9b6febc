"""Every operation on the chunks and events tables, and nothing else.

The only module that executes the named queries of ``queries.sql``.  A Store owns a
small psycopg_pool pool (:mod:`indexer.db.pool`), so one Store may be shared by
threads: the worker and its lease keeper, or every /search request of the HTTP API.
While the database is away a call raises :class:`DatabaseUnavailable` (after waiting
at most ``timeout`` seconds for a connection); the pool reconnects on its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, LiteralString, cast

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import DictRow

from indexer.db import connect as db
from indexer.db.connect import quote_name
from indexer.db.migrate import check_schema
from indexer.db.pool import open_pool
from indexer.exceptions import InsufficientPrivilege, SourceError, first_line, stored_error
from indexer.limits import CONTENT_CHARS, check_k, check_passages
from indexer.store.console import ConsoleQueries
from indexer.store.documents import DocumentQueries
from indexer.store.listen import Listener
from indexer.store.queries import QUERIES

#: hnsw.ef_search of every pooled connection: how many candidates one HNSW scan
#: keeps, so the most rows it can return.  A search for more rows widens it for
#: that statement only.
EF_SEARCH = 100


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


@dataclass(frozen=True)
class CacheStats:
    """What ``indexer cache stats`` shows: size, and how much of the work it saved."""

    entries: int
    bytes: int
    models: dict[str, int]
    least_recently_used: Any
    rows_written: int
    rows_reused: int
    rows_written_last_hour: int
    rows_reused_last_hour: int
    since: Any

    @property
    def hit_rate(self) -> float | None:
        """Share of the rows written (in the events kept) whose vector was reused."""
        return self.rows_reused / self.rows_written if self.rows_written else None

    @property
    def hit_rate_last_hour(self) -> float | None:
        if not self.rows_written_last_hour:
            return None
        return self.rows_reused_last_hour / self.rows_written_last_hour


@dataclass(frozen=True)
class SearchHit:
    id: int
    score: float
    content: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class DocumentHit:
    """One document of a document search: its source and key, the score of its best
    passage, that passage (``content``, its ``position`` in the document from 0, and
    its span ``char_start``:``char_end`` in the document's text, 0-based characters),
    the passage's metadata, and the document's best ``passages`` (dicts of content,
    score, position, char_start, char_end), best first."""

    source: str
    key: str
    score: float
    content: str
    position: int
    char_start: int
    char_end: int
    metadata: dict[str, Any]
    passages: list[dict[str, Any]]


#: The errors add_source() and remove_source() raise on purpose (a missing table or
#: column, a bad key, no privilege, ...): SourceError with their first line.  Connection
#: errors (OperationalError) stay DatabaseUnavailable.
_SOURCE_ERRORS: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.ProgrammingError,
    psycopg.errors.DataError,
    psycopg.errors.NotSupportedError,
    psycopg.errors.IntegrityError,
    psycopg.errors.InternalError,
)


#: add_source and remove_source take a lock on the application's table (CREATE / DROP
#: TRIGGER).  Each try waits at most LOCK_WAIT in the table's lock queue, so the
#: application's statements never queue behind it for longer; then it steps aside and
#: tries again, LOCK_TRIES times (about ten seconds in all), before giving up.
LOCK_WAIT = "200ms"
LOCK_TRIES = 25

log = logging.getLogger(__name__)

#: What a named query does, in the words of the message a missing privilege gets, and
#: who may: "search" and "write" (what grant_search and grant_write give a role),
#: "owner" (the role that owns the indexer's tables; the default); "source": a source's
#: table is read, and its driver error is that source's (see DocumentQueries).
_DOING: dict[str, tuple[str, str]] = {
    "insert_chunks": ("add rows", "write"),
    "insert_documents": ("add documents", "write"),
    "retry_failed": ("re-queue failed rows", "write"),
    "retry_documents": ("re-queue failed documents", "write"),
    "search_coverage": ("search", "search"),
    "prune_events": ("prune events", "owner"),
    "prune_cache_age": ("prune the vector cache", "owner"),
    "prune_cache_size": ("prune the vector cache", "owner"),
    "cache_purge": ("purge the vector cache", "owner"),
    "cache_clear": ("purge the vector cache", "owner"),
    "cache_stats": ("read the vector cache's statistics", "owner"),
    "status": ("read the status", "owner"),
    "queue_status": ("read the backlog", "owner"),
    "failed_rows": ("read the failed rows", "owner"),
    "failed_documents": ("read the failed documents", "owner"),
    "source_status": ("read the sources' status", "owner"),
    "source_queue_status": ("read the sources' status", "owner"),
    "insert_event": ("write events (the daemon's work)", "owner"),
    "add_source": ("add a source", "owner"),
    "detach_source": ("remove a source", "owner"),
    "remove_source": ("remove a source", "owner"),
    "source_texts": ("read a source's table", "source"),
    "backfill_source": ("back-fill a source", "source"),
    "throughput": ("read the events", "owner"),
    "passage_context": ("read a source's table", "source"),
}


def _or_member(owner: DictRow) -> str:
    """How a role gets the rights of the indexer's owner besides logging in as it: made
    a member of it; never said of a superuser (its members could act as it on every
    object it owns)."""
    if owner["owner_is_superuser"]:
        return ""
    return (
        f", or ask an administrator to run GRANT {quote_name(owner['owner'])} TO "
        f"{quote_name(owner['role'])};"
    )


class Store(DocumentQueries, ConsoleQueries):
    """The indexer's tables in ``schema`` of the database at ``dsn``.

    ``check`` (default on): the first call makes sure pgvector is there and the schema
    is migrated (one clear error otherwise), on a connection of its own, so the reason
    is not lost in the pool's retries.  ``pool_size``: connections used at once;
    ``name``: the pool's name in psycopg_pool's log lines.
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        pool_size: int = 1,
        timeout: float = 5.0,
        check: bool = True,
        name: str = "indexer",
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self._checked = not check
        self._check_lock = threading.Lock()
        self._pool = open_pool(
            dsn, schema, size=pool_size, timeout=timeout, configure=self._configure, name=name
        )

    # -- connections ---------------------------------------------------------------

    def check(self) -> None:
        """Raise ExtensionMissing, SchemaNotMigrated or DatabaseUnavailable with the
        reason, or return once the database is ready for this indexer."""
        with (
            db.wrap_errors("checking the schema"),
            db.connect(self.dsn, self.schema, autocommit=True) as conn,
        ):
            check_schema(conn, self.schema)
        self._checked = True

    def close(self) -> None:
        self._pool.close()

    def listener(self) -> Listener:
        """A listener for this database's wake-ups (a connection of its own)."""
        return Listener(self.dsn, self.schema)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _configure(self, conn: db.Connection, pgvector: tuple[int, ...]) -> None:
        """Session settings of every pooled connection (set once, when it opens)."""
        conn.execute(QUERIES["search_width"], {"ef_search": str(EF_SEARCH), "local": False})
        if pgvector >= (0, 8):
            # Keep scanning until k rows pass a metadata filter (0.7 has no such scan).
            conn.execute(QUERIES["search_iterative"])

    @contextmanager
    def _connection(
        self, what: str, *, doing: str | None = None, need: str = "owner"
    ) -> Iterator[db.Connection]:
        """A pooled connection (``what``: for the line of an outage).  A privilege this
        role lacks is InsufficientPrivilege saying it may not ``doing`` and what to run:
        ``need`` is "search" or "write" (grant_search, grant_write) or "owner" (only the
        role that owns the indexer's tables may)."""
        if not self._checked:
            with self._check_lock:
                if not self._checked:
                    self.check()
        with db.wrap_errors(what), self._pool.connection() as conn:
            try:
                yield conn
            except psycopg.errors.InsufficientPrivilege as exc:
                if exc.diag.context or need == "source":
                    # Raised in a function of the indexer (its own line, with what to
                    # grant), or reading a source's table (that source's error).
                    raise
                raise self._privilege_error(conn, doing or what, need, exc) from None

    def _privilege_error(
        self, conn: db.Connection, what: str, need: str, exc: psycopg.Error
    ) -> InsufficientPrivilege:
        """The one line for a privilege this role lacks, with what to run or ask for."""
        try:
            row = conn.execute(QUERIES["indexer_owner"]).fetchone()
        except psycopg.Error:
            row = None
        role = str(row["role"]) if row else (conn.info.user or "this role")
        owner = str(row["owner"]) if row and row["owner"] else None
        line = f"role {role} may not {what} ({first_line(exc)})"
        schema = quote_name(self.schema)
        grant = {"search": "grant_search", "write": "grant_write"}.get(need)
        if grant is not None:
            call = f"SELECT {schema}.{grant}({sql.Literal(role).as_string(conn)});"
            return InsufficientPrivilege(
                f"{line}: ask the owner of the indexer's tables"
                f"{f' (role {owner})' if owner else ''} to run {call}"
            )
        if owner is None:
            return InsufficientPrivilege(
                f"{line}: only the role that owns the indexer's tables (the one that ran "
                "`indexer migrate`) may; run the command as that role"
            )
        assert row is not None
        return InsufficientPrivilege(
            f"{line}: only role {owner}, which owns the indexer's tables, may; run the "
            f"command as {owner}{_or_member(row)}"
        )

    def _execute(
        self, name: str, params: dict[str, Any] | None = None, *, binary: bool = False
    ) -> list[DictRow]:
        """Run the named query; its rows (none for a statement without RETURNING)."""
        query: LiteralString = QUERIES[name]
        doing, need = _DOING.get(name, (f"run {name}", "owner"))
        with self._connection(f"running {name}", doing=doing, need=need) as conn:
            cursor = conn.execute(query, params, binary=binary)
            return cursor.fetchall() if cursor.description is not None else []

    def _one(self, name: str, params: dict[str, Any] | None = None) -> DictRow:
        rows = self._execute(name, params)
        if len(rows) != 1:
            raise RuntimeError(f"query {name} returned {len(rows)} rows, not one")
        return rows[0]

    # -- the daemon's queue --------------------------------------------------------

    def claim(
        self,
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
        self, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float
    ) -> list[int]:
        """Renew the leases of ``ids``; return those this daemon still holds."""
        if not ids:
            return []
        rows = self._execute(
            "extend_lease",
            {"worker_id": worker_id, "ids": list(ids), "lease_seconds": lease_seconds},
        )
        return sorted(r["id"] for r in rows)

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

    def insert_chunks(self, contents: Sequence[str], metadata: Sequence[str]) -> list[int]:
        rows = self._execute(
            "insert_chunks", {"contents": list(contents), "metadata": list(metadata)}
        )
        return [r["id"] for r in rows]

    # -- reading and maintenance ---------------------------------------------------

    def status(self) -> dict[str, Any]:
        return dict(self._one("status"))

    def queue_status(self) -> dict[str, Any]:
        """pending, in_flight, backlog, failed, oldest_pending_age: cheap at any table size."""
        return dict(self._one("queue_status"))

    def failed_rows(self, limit: int = 20) -> list[dict[str, Any]]:
        return [dict(r) for r in self._execute("failed_rows", {"limit": limit})]

    def retry_failed(self, ids: Sequence[int] | None = None) -> list[int]:
        rows = self._execute("retry_failed", {"ids": None if ids is None else list(ids)})
        return [r["id"] for r in rows]

    def failed_documents(self, limit: int = 20) -> list[dict[str, Any]]:
        """Documents parked as failed: source (its name), key, attempts, last_error."""
        return [dict(r) for r in self._execute("failed_documents", {"limit": limit})]

    def retry_failed_documents(self, source: str | None = None) -> dict[str, int]:
        """Re-queue the failed documents of every source, or of ``source``; how many per
        source (SourceError for an unknown name)."""
        try:
            rows = self._execute("retry_documents", {"source": source})
        except psycopg.errors.UndefinedObject as exc:  # no source of that name
            raise SourceError(first_line(exc)) from exc
        return {r["source"]: int(r["requeued"]) for r in rows}

    def search_coverage(self, source: str | None = None) -> dict[str, bool | None]:
        """What a search that found nothing could have found: rows_embedded,
        rows_waiting; passages this role may read, documents_indexed and
        documents_waiting (None: this role may not tell), of ``source`` if given."""
        return dict(self._one("search_coverage", {"source": source}))

    def check_owner(self) -> None:
        """Raise InsufficientPrivilege unless this role has the rights of the role that
        owns the indexer's tables (the daemon writes all of them)."""
        row = self._one("indexer_owner")
        if row["owns"] is False:
            raise InsufficientPrivilege(
                f"role {row['role']} may not run the daemon: it writes every table of the "
                f"indexer in schema {self.schema!r}, which belong to role {row['owner']}; "
                f"run `indexer run` as {row['owner']}{_or_member(row)}"
            )

    def prune_events(self, older_than_seconds: float) -> int:
        return int(self._one("prune_events", {"older_than_seconds": older_than_seconds})["pruned"])

    # -- the vector cache ------------------------------------------------------------

    def prune_cache(self, max_age_seconds: float, max_entries: int, batch: int = 5000) -> int:
        """Delete at most ``batch`` entries unused for ``max_age_seconds``, or else at
        most ``batch`` of the least recently used beyond ``max_entries``; how many.

        One short statement: call again until it returns 0 (the pruner does)."""
        pruned = int(
            self._one("prune_cache_age", {"max_age_seconds": max_age_seconds, "batch": batch})[
                "pruned"
            ]
        )
        if pruned:
            return pruned
        params = {"max_entries": max_entries, "batch": batch}
        return int(self._one("prune_cache_size", params)["pruned"])

    def cache_stats(self) -> CacheStats:
        r = self._one("cache_stats")
        return CacheStats(
            entries=int(r["entries"]),
            bytes=int(r["bytes"]),
            models={str(k): int(v) for k, v in r["models"].items()},
            least_recently_used=r["least_recently_used"],
            rows_written=int(r["rows_written"]),
            rows_reused=int(r["rows_reused"]),
            rows_written_last_hour=int(r["rows_written_last_hour"]),
            rows_reused_last_hour=int(r["rows_reused_last_hour"]),
            since=r["since"],
        )

    def cache_purge(
        self,
        *,
        texts: Sequence[str] = (),
        hashes: Sequence[bytes] = (),
        ids: Sequence[int] = (),
        max_chars: int,
    ) -> int:
        """Delete the cached vectors of these texts, hashes and rows (every model)."""
        params = {
            "texts": list(texts),
            "hashes": list(hashes),
            "ids": list(ids),
            "max_chars": max_chars,
        }
        return int(self._one("cache_purge", params)["purged"])

    def cache_clear(self) -> None:
        self._execute("cache_clear")

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        metadata_filter: dict[str, Any] | None = None,
        max_chars: int = CONTENT_CHARS,
    ) -> list[SearchHit]:
        """The k embedded rows nearest to ``query`` (cosine), best first."""
        params = {
            "query": query,
            "k": k,
            "filter": json.dumps(metadata_filter or {}),
            "max_chars": max_chars,
        }
        with self._connection("searching", doing="search", need="search") as conn:
            if k <= EF_SEARCH:
                rows = conn.execute(QUERIES["search"], params).fetchall()
            else:
                # One HNSW scan returns at most ef_search rows: widen it for this
                # statement only (set_config(..., true) lasts to the transaction's end).
                with conn.transaction():
                    conn.execute(QUERIES["search_width"], {"ef_search": str(k), "local": True})
                    rows = conn.execute(QUERIES["search"], params).fetchall()
        return [SearchHit(r["id"], float(r["score"]), r["content"], r["metadata"]) for r in rows]

    # -- sources (the front door) -----------------------------------------------------

    def _source_call(self, name: str, params: dict[str, Any]) -> DictRow:
        try:
            return self._one(name, params)
        except _SOURCE_ERRORS as exc:
            raise SourceError(first_line(exc)) from exc

    def _locking_call(self, name: str, params: dict[str, Any], doing: str) -> DictRow:
        """A source call that takes a lock on the application's table (see LOCK_WAIT)."""
        for attempt in range(LOCK_TRIES):
            try:
                return self._source_call(name, {**params, "lock_wait": LOCK_WAIT})
            except psycopg.errors.LockNotAvailable:
                time.sleep(min(0.05 * 2**attempt, 0.5))
        raise SourceError(
            f"cannot {doing}: a transaction of the application holds a lock on the table "
            f"({LOCK_TRIES} tries, each waiting at most {LOCK_WAIT} so as not to hold up its "
            "other statements); try again once it ends"
        )

    def add_source(
        self,
        table: str,
        *,
        key: str | None = None,
        text: Sequence[str],
        metadata: Sequence[str] = (),
        metadata_json: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Register ``table`` (its triggers installed; its rows back-filled by the
        daemon); the source's row, with ``estimated_rows`` (None: unknown).  SourceError
        with the database's one line when the table cannot be a source."""
        if isinstance(text, str) or isinstance(metadata, str):
            raise SourceError("text and metadata columns must be lists of names, not one string")
        params = {
            "table": table,
            "key": key,
            "text": list(text),
            "metadata": list(metadata),
            "metadata_json": metadata_json,
            "name": name,
        }
        return dict(self._locking_call("add_source", params, f"add source {table}"))

    def remove_source(self, name: str) -> int:
        """Unregister a source: its triggers dropped, its documents and chunks deleted;
        the number of chunks deleted.  Two transactions: the triggers are dropped (and
        the application's table unlocked) before the chunks are deleted."""
        left = self._locking_call("detach_source", {"name": name}, f"remove source {name}")
        if left["detached"] is not None:
            log.warning("%s", left["detached"])
        removed = self._locking_call("remove_source", {"name": name}, f"remove source {name}")
        return int(removed["removed"])

    def source_status(self) -> list[dict[str, Any]]:
        """The ``indexer_source_status`` view, one row per source, by name."""
        return [dict(r) for r in self._execute("source_status")]

    def source_queue_status(self) -> list[dict[str, Any]]:
        """Per source: pending, in_flight, failed, indexed, lag (cheap; for /metrics)."""
        return [dict(r) for r in self._execute("source_queue_status")]

    def search_documents(
        self,
        query: np.ndarray,
        k: int,
        *,
        filter: dict[str, Any] | None = None,
        source: str | None = None,
        passages: int = 3,
        take: Callable[[DocumentHit], bool] | None = None,
    ) -> list[DocumentHit]:
        """The k documents whose best chunk is nearest to ``query`` (cosine), best first;
        only chunks whose metadata contains ``filter``, of ``source`` (None: all).

        The rows are read one at a time (k documents of 20 passages each may be far more
        than a caller wants to hold).  ``take``, if given, sees each document in turn and
        returns False to stop: that document and the rest are left out, never read."""
        check_k(k)
        check_passages(passages)
        params = {
            "query": query,
            "k": k,
            "filter": json.dumps(filter or {}),
            "source": source,
            "passages": passages,
        }
        hits: list[DocumentHit] = []

        def read(conn: db.Connection) -> None:
            rows = conn.cursor().stream(QUERIES["search_documents"], params)
            try:
                for r in rows:
                    hit = DocumentHit(
                        source=r["source"],
                        key=r["key"],
                        score=float(r["score"]),
                        content=r["content"],
                        position=r["position"],
                        char_start=r["char_start"],
                        char_end=r["char_end"],
                        metadata=r["metadata"],
                        passages=list(r["passages"]),
                    )
                    if take is not None and not take(hit):
                        break
                    hits.append(hit)
            finally:  # stopped early: the statement is cancelled and drained now
                cast(Generator[Any, None, None], rows).close()

        try:
            with self._connection(
                "searching documents", doing="search documents", need="search"
            ) as conn:
                if k <= EF_SEARCH:
                    read(conn)
                else:
                    # As in search(): one HNSW scan returns at most ef_search rows, so
                    # widen it for this statement only.
                    with conn.transaction():
                        width = {"ef_search": str(k), "local": True}
                        conn.execute(QUERIES["search_width"], width)
                        read(conn)
        except psycopg.errors.UndefinedObject as exc:  # no source of that name
            raise SourceError(first_line(exc)) from exc
        return hits

    def insert_documents(self, contents: Sequence[str], metadata: Sequence[str]) -> list[int]:
        """Rows of the built-in documents table (metadata as JSON text); their ids."""
        rows = self._execute(
            "insert_documents", {"contents": list(contents), "metadata": list(metadata)}
        )
        return [r["id"] for r in rows]
