"""Attacks on model indexes built after the fill (migration 0011), on the real server,
as an unprivileged role, a searching role and a writing role would: the new functions'
privileges, the build's advisory lock squatted, drop_model's cancel aimed at another
backend, functions and operators planted on the daemon's search_path, and a relation
named as a model's index.  Each test states what must hold; one that failed before the
fix committed with it says so."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexer.db import migrate
from indexer.db.connect import Connection
from indexer.exceptions import InvalidInput
from indexer.settings import Settings
from indexer.store import Store
from indexer.worker.indexes import IndexBuilder

from ..helpers import wait_until
from .test_privileges import as_role, role

BUILDER_LOG = "indexer.worker.indexes"


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    with Store(settings.database_url or "", settings.schema) as s:
        yield s


def _add_deferred(store: Store, name: str = "m3") -> int:
    """A model whose index is left to a daemon (defer_index_at=0: deferred on any
    corpus), due at once (no chunk to fill)."""
    return store.add_model(name, dimension=3, record={}, fingerprint="fp-" + name, defer_index_at=0)


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if isinstance(row, tuple) else next(iter(row.values()))


def _state(conn: Connection, model_id: int) -> str:
    return str(_one(conn, "SELECT model_index(%s::integer)", (model_id,)))


def _indexes(conn: Connection, model_id: int) -> list[tuple[str, bool]]:
    rows = conn.execute(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary ORDER BY 1",
        (f"model_{model_id}_vectors",),
    ).fetchall()
    return [(r["relname"], r["indisvalid"]) for r in rows]


def _lock_key(attacker: psycopg.Connection[Any], schema: str = "public") -> int:
    """The build lock's first key, as any role can compute it (no EXECUTE needed)."""
    return int(_one(attacker, "SELECT hashtext(%s || '.model_index') & 2147483647", (schema,)))


# --- 1. who may run the new functions ----------------------------------------------


def test_no_role_but_the_owner_may_run_the_index_functions(
    conn: Connection, database: str, store: Store
) -> None:
    """An unprivileged role, a searching role and a writing role may run none of 0011's
    functions (grant_search grants none of them), nor read indexer_model_status; PUBLIC
    has EXECUTE on none."""
    model_id = _add_deferred(store)
    signatures = [
        "model_index_lock()",
        "model_index_name(integer)",
        "model_index(integer)",
        "models_to_index(bigint)",
        "add_model(text, integer, jsonb, text, boolean, interval, bigint)",
        "activate_model(text, boolean)",
        "drop_model(text, interval)",
    ]
    for signature in signatures:
        assert (
            _one(conn, "SELECT has_function_privilege('public', %s, 'EXECUTE')", (signature,))
            is False
        ), signature
    attempts = [
        "SELECT model_index_lock()",
        f"SELECT model_index_name({model_id})",
        f"SELECT model_index({model_id})",
        "SELECT * FROM models_to_index(0)",
        "SELECT add_model('evil', 3, '{}'::jsonb, 'x', false, '200ms'::interval, 0::bigint)",
        "SELECT activate_model('m3', true)",
        "SELECT drop_model('m3')",
        "SELECT * FROM indexer_model_status",
    ]
    for grant in (None, "grant_search", "grant_write"):
        with role(conn, database) as (name, dsn):
            if grant is not None:
                conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(grant)), (name,))
            with as_role(dsn) as attacker:
                for statement in attempts:
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        attacker.execute(statement)
    assert [m.name for m in store.models() if m.name == "m3"] == ["m3"]
    assert _state(conn, model_id) == "none"


# --- 2. the build lock squatted --------------------------------------------------------


def test_a_squatted_build_lock_is_no_build_and_the_build_waits_with_one_warning(
    conn: Connection, database: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Any role may take the model's build lock.  Its lock is no build (model_index
    says none, activation says the index is not built), the daemon builds nothing while
    it is held and says so once, naming the role and its pid, and builds once it is
    released."""
    model_id = _add_deferred(store)
    caplog.set_level(logging.WARNING, logger=BUILDER_LOG)
    with role(conn, database) as (name, dsn), as_role(dsn) as squatter:
        key = _lock_key(squatter)
        assert key == int(_one(conn, "SELECT model_index_lock()"))
        squatter.execute("SELECT pg_advisory_lock(%s::integer, %s::integer)", (key, model_id))
        pid = int(_one(squatter, "SELECT pg_backend_pid()"))

        assert _state(conn, model_id) == "none"
        with pytest.raises(InvalidInput, match="not built yet"):
            store.activate_model("m3")
        builder = IndexBuilder(store)
        assert builder.build_due() == 0
        assert builder.build_due() == 0
        assert _indexes(conn, model_id) == []
        warnings = [r.getMessage() for r in caplog.records if r.name == BUILDER_LOG]
        assert len(warnings) == 1, warnings
        assert name in warnings[0] and f"pid {pid}" in warnings[0]

        squatter.execute("SELECT pg_advisory_unlock(%s::integer, %s::integer)", (key, model_id))
        assert builder.build_due() == 1
    assert _indexes(conn, model_id) == [(f"model_{model_id}_vectors_embedding_idx", True)]
    assert _state(conn, model_id) == "ready"
    assert store.activate_model("m3") == 0


def test_drop_model_cancels_no_backend_of_a_squatter(
    conn: Connection, database: str, store: Store
) -> None:
    """A squatter holds the model's build lock in a session running a statement that
    reads as an index build (CREATE INDEX CONCURRENTLY, on a table of its own, waiting
    for a lock its other session holds).  drop_model cancels builds of its own role
    only: the squatter's statement runs on, and ends without error."""
    model_id = _add_deferred(store)
    with role(conn, database) as (name, dsn):
        conn.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(name), sql.Identifier(name)
            )
        )
        with as_role(dsn) as squatter, as_role(dsn) as blocker, as_role(dsn) as watcher:
            table = sql.Identifier(name, "t")
            squatter.execute(sql.SQL("CREATE TABLE {} (x integer)").format(table))
            squatter.execute(
                "SELECT pg_advisory_lock(%s::integer, %s::integer)",
                (_lock_key(squatter), model_id),
            )
            pid = int(_one(squatter, "SELECT pg_backend_pid()"))
            blocker.execute("BEGIN")
            blocker.execute(sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(table))
            errors: list[BaseException] = []

            def build() -> None:
                try:
                    squatter.execute(
                        sql.SQL("CREATE INDEX CONCURRENTLY t_x ON {} (x)").format(table)
                    )
                except BaseException as exc:  # handed to the test
                    errors.append(exc)

            thread = threading.Thread(target=build, daemon=True)
            thread.start()

            def waiting() -> bool:
                # Seen by a session of the squatter's role (its query text is its own).
                row = watcher.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
                    " AND query ILIKE 'CREATE INDEX CONCURRENTLY %%'",
                    (pid,),
                ).fetchone()
                return row is not None and row[0] == "Lock"

            assert wait_until(waiting, 30)
            store.drop_model("m3")
            assert [m.name for m in store.models() if m.name == "m3"] == []
            thread.join(1)
            assert thread.is_alive() and waiting()  # not cancelled
            blocker.execute("COMMIT")
            thread.join(30)
            assert not thread.is_alive() and errors == []


# --- 3. the daemon's search_path ------------------------------------------------------

# Functions and operators another role plants in public (CREATE on public, as on a
# database created before PostgreSQL 15), each recording who ran it: overloads of the
# built-in functions and of the indexer's own that the daemon's statements name.
_TRAPS: list[tuple[str, str, str]] = [
    ("pg_try_advisory_lock(integer, smallint)", "boolean", "true"),
    ("pg_try_advisory_lock(integer, bigint)", "boolean", "true"),
    ("pg_try_advisory_lock(bigint, integer)", "boolean", "true"),
    ("pg_backend_pid(x integer DEFAULT 0)", "integer", "1"),
    ("current_database(x integer DEFAULT 0)", "name", "'x'"),
    ("set_config(name, text, boolean)", "text", "'x'"),
    ("model_index_lock(x integer DEFAULT 0)", "integer", "1"),
    ("model_index_name(bigint)", "text", "'x'"),
    ("model_index(bigint)", "text", "'ready'"),
    ("model_index(numeric)", "text", "'ready'"),
]
_TABLE_TRAPS = ["models_to_index(integer)", "models_to_index(numeric)"]
_OPERATORS: list[tuple[str, str, str]] = [
    ("=", "oid", "oid"),
    ("=", "oid", "integer"),
    ("=", "oid", "bigint"),
    ("<>", "oid", "oid"),
    ("=", "smallint", "integer"),
    ("=", "text", "text"),
    ("=", "name", "name"),
]


def _plant_traps(attacker: psycopg.Connection[Any]) -> None:
    attacker.execute("CREATE TABLE public.hits (who text, what text)")
    attacker.execute("GRANT INSERT ON public.hits TO PUBLIC")
    record = sql.SQL("INSERT INTO public.hits VALUES (current_user, {});")
    for signature, returns, value in _TRAPS:
        attacker.execute(
            sql.SQL(
                "CREATE FUNCTION public.{} RETURNS {} LANGUAGE plpgsql"
                " AS $$ BEGIN {} RETURN {}; END $$"
            ).format(
                sql.SQL(signature),
                sql.SQL(returns),
                record.format(sql.Literal(signature)),
                sql.SQL(value),
            )
        )
    for signature in _TABLE_TRAPS:
        attacker.execute(
            sql.SQL(
                "CREATE FUNCTION public.{} RETURNS TABLE (model_id integer, name text,"
                " halfvec boolean, vectors text, index text, state text) LANGUAGE plpgsql"
                " AS $$ BEGIN {} END $$"
            ).format(sql.SQL(signature), record.format(sql.Literal(signature)))
        )
    for n, (op, left, right) in enumerate(_OPERATORS):
        function = sql.Identifier("public", f"trap_op_{n}")
        attacker.execute(
            sql.SQL(
                "CREATE FUNCTION {}({}, {}) RETURNS boolean LANGUAGE plpgsql"
                " AS $$ BEGIN {} RETURN true; END $$"
            ).format(
                function,
                sql.SQL(left),
                sql.SQL(right),
                record.format(sql.Literal(f"operator {op}({left}, {right})")),
            )
        )
        attacker.execute(
            sql.SQL(
                "CREATE OPERATOR public.{} (LEFTARG = {}, RIGHTARG = {}, FUNCTION = {})"
            ).format(sql.SQL(op), sql.SQL(left), sql.SQL(right), function)
        )


def test_no_function_or_operator_planted_in_public_runs_in_the_daemons_build(
    conn: Connection, database: str
) -> None:
    """The indexer in a schema of its own (ix), pgvector in public, and another role
    allowed to create in public: the functions and operators it plants there, on the
    daemon's search_path, never run as the daemon's role while a model is added, its
    index found due, built (and its lock's holder looked up), and the model activated
    and dropped."""
    migrate.upgrade(database, "ix")
    with role(conn, database) as (name, dsn):
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        with as_role(dsn) as attacker:
            _plant_traps(attacker)
            with Store(database, "ix") as store:
                model_id = _add_deferred(store)
                store.add_model("m4", dimension=3, record={}, fingerprint="fp-m4")  # indexed
                (work,) = store.models_to_index()
                assert (work.model_id, work.state) == (model_id, "none")
                assert work.vector_schema == "public"
                assert store.index_lock_holder(model_id) is None
                assert IndexBuilder(store).build_due() == 1
                assert store.activate_model("m3") == 0
                assert [m["index"] for m in store.model_status() if m["model"] == "m3"] == ["ready"]
                assert store.activate_model("m4") == 0
                store.drop_model("m3")
            hits = attacker.execute("SELECT who, what FROM public.hits").fetchall()
            assert hits == []
            # The traps work: a comparison that resolves to one records its caller.
            attacker.execute("SELECT 1::oid = 1")
            hits = attacker.execute("SELECT who, what FROM public.hits").fetchall()
            assert hits == [(name, "operator =(oid, integer)")]


# --- 4. a relation named as a model's index ------------------------------------------


def test_a_relation_named_as_a_models_index_is_not_its_index(
    conn: Connection, database: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Another role that may create in the indexer's schema (public, before PostgreSQL
    15, unless CREATE was revoked as the roles guide says) names an index of a table of
    its own as the model's index.  It must not pass for the model's index: model_index
    says none, activation is refused, the daemon reports the name taken (once) instead
    of a build, and builds once the name is free.  Before the fix model_index said
    ready, activate_model accepted the model with no index (every search a scan of its
    vectors), and no daemon ever built it."""
    model_id = _add_deferred(store)
    index = f"model_{model_id}_vectors_embedding_idx"
    caplog.set_level(logging.WARNING, logger=BUILDER_LOG)
    with role(conn, database) as (name, dsn):
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        with as_role(dsn) as attacker:
            attacker.execute("CREATE TABLE public.decoy (embedding public.vector(3))")
            attacker.execute(
                sql.SQL("CREATE INDEX {} ON public.decoy USING hnsw").format(sql.Identifier(index))
                + sql.SQL(" (embedding public.vector_cosine_ops)")
            )
            assert _state(conn, model_id) == "none"
            with pytest.raises(InvalidInput, match="not built yet"):
                store.activate_model("m3")
            builder = IndexBuilder(store)
            assert builder.build_due() == 0
            assert builder.build_due() == 0
            assert _indexes(conn, model_id) == []
            warnings = [r.getMessage() for r in caplog.records if r.name == BUILDER_LOG]
            assert len(warnings) == 1 and index in warnings[0], warnings

            attacker.execute("DROP TABLE public.decoy")
            assert builder.build_due() == 1
    assert _indexes(conn, model_id) == [(index, True)]
    assert store.activate_model("m3") == 0


# --- 4. an index being built is no index for searches ---------------------------------


@contextlib.contextmanager
def _old_snapshot(database: str) -> Iterator[None]:
    """A transaction holding a snapshot: the build's index stays invalid until it ends."""
    with psycopg.connect(database) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")
        yield
        holder.rollback()


def test_a_searching_role_never_searches_through_an_index_being_built(
    conn: Connection, database: str, store: Store
) -> None:
    """While the build runs, its invalid index is in the catalog: a searching role's
    plans never use it (even with scans disabled), and do once it is valid."""
    query = sql.SQL(
        "EXPLAIN SELECT chunk_id FROM {} ORDER BY embedding <=> '[1,0,0]'::vector LIMIT 3"
    )
    with role(conn, database) as (name, dsn):
        conn.execute("SELECT grant_search(%s)", (name,))
        model_id = _add_deferred(store)  # its table granted to the searching role
        index = f"model_{model_id}_vectors_embedding_idx"
        table = sql.Identifier(f"model_{model_id}_vectors")

        def plan(reader: psycopg.Connection[Any]) -> str:
            return "\n".join(str(r[0]) for r in reader.execute(query.format(table)).fetchall())

        errors: list[BaseException] = []

        def build() -> None:
            try:
                IndexBuilder(store).build_due()
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        with as_role(dsn) as reader:
            reader.execute("SET enable_seqscan = off")
            with _old_snapshot(database):
                thread = threading.Thread(target=build, daemon=True)
                thread.start()
                assert wait_until(lambda: _indexes(conn, model_id) == [(index, False)], 60)
                assert _state(conn, model_id) == "building"
                assert index not in plan(reader)
            thread.join(60)
            assert errors == [] and _state(conn, model_id) == "ready"
            assert index in plan(reader)
