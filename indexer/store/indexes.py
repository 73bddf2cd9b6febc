"""The HNSW index of a model added to a large corpus, built after its fill (migration 0011).

``add_model`` leaves a model's table without its index when many chunks are embedded
already: inserting each vector the fill writes into a growing graph costs PostgreSQL
far more than one build over all of them, and those inserts run at the priority of
every search.  ``models_to_index`` names the models whose index is due (filled, or
active); :class:`IndexBuild` builds one:

- on a connection of its own, in autocommit (``CREATE INDEX CONCURRENTLY`` may not run
  in a transaction, and a build takes minutes: it must not hold a pooled connection);
- under the model's build lock, a session-level advisory lock: one build at a time per
  model across every daemon.  A build cut off with its session (a killed backend, a
  server restart) frees it; the backend of a daemon killed during a build may go on to
  the end (PostgreSQL notices a vanished client when it next writes to it), holding the
  lock until then;
- after dropping the invalid index a cut-off build left (``DROP INDEX CONCURRENTLY``);
- concurrently: searches, the fill's writes and new rows go on meanwhile, and the index
  is used only once it is valid.

``cancel`` (another thread) stops the build; the invalid index it leaves is the next
build's to replace.  ``drop_model`` cancels a build of its model the same way.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from indexer.db import connect as db
from indexer.exceptions import DatabaseUnavailable, first_line
from indexer.priority import lower_backend


@dataclass(frozen=True)
class IndexWork:
    """A model whose index is due: a row of ``models_to_index``."""

    model_id: int
    name: str
    halfvec: bool
    vectors: str
    index: str
    #: ``none`` (never built) or ``broken`` (an invalid index a cut-off build left).
    state: str
    vector_schema: str


class IndexBuild:
    """One build of ``work``'s index (see the module docstring)."""

    def __init__(self, dsn: str, schema: str, work: IndexWork) -> None:
        self.dsn = dsn
        self.schema = schema
        self.work = work
        self._conn: psycopg.Connection[Any] | None = None
        self._cancelled = threading.Event()
        #: Why the building backend was not niced (None: it was, or was not asked to be).
        self.refused: str | None = None

    def run(
        self,
        *,
        lower: bool = True,
        memory: str | None = None,
        started: Callable[[], None] | None = None,
    ) -> bool:
        """Build the index; False when another session holds the model's build lock or
        the index is no longer due.  ``lower``: nice the building backend when the server
        runs on this machine (:func:`indexer.priority.lower_backend`: the build then runs
        in that one process, with no parallel workers; why not, if refused, is
        :attr:`refused`).  ``memory``: the build's ``maintenance_work_mem`` (None: the
        server's).  ``started`` is called once the lock is held and the build due.
        Raises QueryCanceled when cancelled, DatabaseUnavailable when the database goes
        away, DuplicateTable when another relation holds the index's name, and what
        PostgreSQL raises for a model dropped meanwhile."""
        with db.connect(self.dsn, self.schema, autocommit=True) as conn:
            self._conn = conn
            try:
                return self._build(conn, lower, memory, started)
            except psycopg.errors.QueryCanceled:
                raise  # an OperationalError, but no outage
            except db.TRANSIENT_ERRORS as exc:
                raise DatabaseUnavailable(
                    f"lost the database while building the index of model "
                    f"{self.work.name}: {first_line(exc)}"
                ) from exc
            finally:
                self._conn = None

    def _build(
        self,
        conn: psycopg.Connection[Any],
        lower: bool,
        memory: str | None,
        started: Callable[[], None] | None,
    ) -> bool:
        work = self.work
        cursor = conn.cursor(row_factory=tuple_row)
        # Every function named with its schema and every value cast: no function of
        # another role on the search_path can stand in for one of these.
        schema = sql.Identifier(self.schema)
        locked = cursor.execute(
            sql.SQL(
                "SELECT pg_catalog.pg_try_advisory_lock({}.model_index_lock(), %s::integer)"
            ).format(schema),
            (work.model_id,),
        ).fetchone()
        if not (locked and locked[0]):
            return False  # another daemon builds it
        # Still due once locked (another build may have finished meanwhile).
        row = cursor.execute(
            sql.SQL("SELECT {}.model_index(%s::integer)").format(schema), (work.model_id,)
        ).fetchone()
        if row is None or row[0] not in ("none", "broken"):
            return False
        if started is not None:
            started()
        if lower:
            self.refused = lower_backend(conn)
            if self.refused is None:
                # One process at the lowest priority: no parallel workers beside it.
                conn.execute("SET max_parallel_maintenance_workers = 0")
        if memory is not None:
            conn.execute(
                "SELECT pg_catalog.set_config('maintenance_work_mem', %s::text, false)", (memory,)
            )
        index = sql.Identifier(self.schema, work.index)
        if row[0] == "broken":
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index))
        self._check_cancelled()
        opclass = "halfvec_cosine_ops" if work.halfvec else "vector_cosine_ops"
        # The options add_model builds an index with at once (migration 0012).
        options = cursor.execute(
            sql.SQL("SELECT m, ef_construction FROM {}.model_index_options(%s::boolean)").format(
                schema
            ),
            (work.halfvec,),
        ).fetchone()
        assert options is not None
        # No IF NOT EXISTS: a relation of another role holding the index's name (one
        # that may create in the schema) is DuplicateTable, not a build done.
        conn.execute(
            sql.SQL(
                "CREATE INDEX CONCURRENTLY {index} ON {table} "
                "USING hnsw (embedding {opclass}) WITH (m = {m}, ef_construction = {ef})"
            ).format(
                index=sql.Identifier(work.index),
                table=sql.Identifier(self.schema, work.vectors),
                opclass=sql.Identifier(work.vector_schema, opclass),
                m=sql.Literal(int(options[0])),
                ef=sql.Literal(int(options[1])),
            )
        )
        return True

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise psycopg.errors.QueryCanceled("the build was cancelled")

    def cancel(self) -> None:
        """Stop the build (from another thread): its statement is cancelled."""
        self._cancelled.set()
        conn = self._conn
        if conn is not None:
            # A connection already gone has taken its build with it.
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe()
