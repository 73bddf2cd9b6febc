"""The Store: the indexer's tables, and the one module that runs their named queries.

The only module that executes the named queries of ``queries.sql``: the queues, the
sources and the vector cache are mixins beside it (:mod:`~indexer.store.queue`,
:mod:`~indexer.store.documents`, :mod:`~indexer.store.sources`,
:mod:`~indexer.store.cache`) that run theirs through its ``_execute``; the searches,
which run statements on a connection of their own, are here, and the build of a
model's index, which does too, is :mod:`~indexer.store.indexes`.  A Store owns a small
psycopg_pool pool (:mod:`indexer.db.pool`), so one Store may be shared by threads: the
worker and its lease keeper, or every /search request of the HTTP API.  While the
database is away a call raises :class:`DatabaseUnavailable` (after waiting at most
``timeout`` seconds for a connection); the pool reconnects on its own.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString, cast

import numpy as np
import psycopg
from psycopg.rows import DictRow

from indexer.db import connect as db
from indexer.db.migrate import check_schema
from indexer.db.pool import open_pool
from indexer.exceptions import InsufficientPrivilege, InvalidInput, SourceError, first_line
from indexer.limits import CONTENT_CHARS, check_k, check_passages
from indexer.priority import lower_backend
from indexer.store.cache import CacheQueries
from indexer.store.console import ConsoleQueries
from indexer.store.documents import DocumentQueries
from indexer.store.hits import DocumentHit, SearchHit
from indexer.store.indexes import IndexBuild, IndexWork
from indexer.store.listen import Listener
from indexer.store.models import ModelQueries
from indexer.store.privileges import DOING, or_member, privilege_error
from indexer.store.queries import QUERIES
from indexer.store.queue import ChunkQueries
from indexer.store.sources import SourceQueries

logger = logging.getLogger(__name__)

#: hnsw.ef_search of every pooled connection: how many candidates one HNSW scan
#: keeps, so the most rows it can return.  A search for more rows widens it for
#: that statement only.
EF_SEARCH = 100


class Store(
    ChunkQueries, DocumentQueries, SourceQueries, CacheQueries, ConsoleQueries, ModelQueries
):
    """The indexer's tables in ``schema`` of the database at ``dsn``.

    ``check`` (default on): the first call makes sure pgvector is there and the schema
    is migrated (one clear error otherwise), on a connection of its own, so the reason
    is not lost in the pool's retries.  ``pool_size``: connections used at once;
    ``name``: the pool's name in psycopg_pool's log lines.  ``background``: for work
    that may wait (a model's fill): each connection's backend is niced to 19 when the
    server runs on this machine (:mod:`indexer.priority`).
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
        background: bool = False,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.background = background
        self._refused: str | None = None
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

    def index_build(self, work: IndexWork) -> IndexBuild:
        """A build of a model's index, on a connection of its own (see IndexBuild)."""
        return IndexBuild(self.dsn, self.schema, work)

    def listener(self) -> Listener:
        """A listener for this database's wake-ups (a connection of its own)."""
        return Listener(self.dsn, self.schema)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _configure(self, conn: db.Connection, pgvector: tuple[int, ...]) -> None:
        """Session settings of every pooled connection (set once, when it opens)."""
        if self.background:
            refused = lower_backend(conn)
            if refused is not None and self._refused is None:
                self._refused = refused
                logger.info("background work's statements run at normal priority (%s)", refused)
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
        return privilege_error(conn, row, self.schema, what, need, exc)

    def _execute(
        self, name: str, params: dict[str, Any] | None = None, *, binary: bool = False
    ) -> list[DictRow]:
        """Run the named query; its rows (none for a statement without RETURNING)."""
        query: LiteralString = QUERIES[name]
        doing, need = DOING.get(name, (f"run {name}", "owner"))
        with self._connection(f"running {name}", doing=doing, need=need) as conn:
            cursor = conn.execute(query, params, binary=binary)
            return cursor.fetchall() if cursor.description is not None else []

    def _execute_all(
        self,
        steps: Sequence[tuple[str, dict[str, Any]]],
        *,
        then: Callable[[list[DictRow]], Sequence[tuple[str, dict[str, Any]]]] | None = None,
    ) -> list[list[DictRow]]:
        """Run named queries in one transaction; the rows of each.  ``then``, if given,
        is handed the last step's rows and returns more steps, run in the same
        transaction."""
        name = steps[0][0]
        doing, need = DOING.get(name, (f"run {name}", "owner"))
        results: list[list[DictRow]] = []
        connection = self._connection(f"running {name}", doing=doing, need=need)
        with connection as conn, conn.transaction():
            todo = list(steps)
            while todo:
                query_name, params = todo.pop(0)
                query: LiteralString = QUERIES[query_name]
                cursor = conn.execute(query, params)
                results.append(cursor.fetchall() if cursor.description is not None else [])
                if not todo and then is not None:
                    todo, then = list(then(results[-1])), None
        return results

    def _one(self, name: str, params: dict[str, Any] | None = None) -> DictRow:
        rows = self._execute(name, params)
        if len(rows) != 1:
            raise RuntimeError(f"query {name} returned {len(rows)} rows, not one")
        return rows[0]

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

    def retry_failed_documents(
        self, source: str | None = None, keys: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Re-queue the failed documents of every source, or of ``source`` (only those
        with these ``keys``, if given); how many per source (SourceError for an
        unknown name)."""
        if keys is not None:
            if source is None:
                raise InvalidInput("keys of failed documents need their source")
            row = self._one("retry_document_keys", {"source": source, "keys": list(keys)})
            return {source: int(row["requeued"])} if row["requeued"] else {}
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
                f"run `indexer run` as {row['owner']}{or_member(row)}"
            )

    def prune_events(self, older_than_seconds: float) -> int:
        return int(self._one("prune_events", {"older_than_seconds": older_than_seconds})["pruned"])

    # -- searches ---------------------------------------------------------------------

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        metadata_filter: dict[str, Any] | None = None,
        max_chars: int = CONTENT_CHARS,
        model: str | None = None,
    ) -> list[SearchHit]:
        """The k embedded rows nearest to ``query`` (cosine), best first, by the
        vectors of ``model`` (None: the active model)."""
        params = {
            "query": query,
            "k": k,
            "filter": json.dumps(metadata_filter or {}),
            "max_chars": max_chars,
            "model": model,
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

    def search_documents(
        self,
        query: np.ndarray,
        k: int,
        *,
        filter: dict[str, Any] | None = None,
        source: str | None = None,
        passages: int = 3,
        take: Callable[[DocumentHit], bool] | None = None,
        model: str | None = None,
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
            "model": model,
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
