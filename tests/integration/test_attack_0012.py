"""Attacks on the HNSW options by type (migration 0012), on the real server, as other
roles would: model_index_options run by an unprivileged, a searching, a writing role or
one that may create in a schema; overloads of it planted where add_model and the
daemon's build look it up; its name taken while it is dropped by a downgrade.  Each test
states what must hold."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexer.db import migrate
from indexer.db.connect import Connection
from indexer.settings import Settings
from indexer.store import Store
from indexer.worker.indexes import IndexBuilder

from .test_halfvec_index import HALFVEC, VECTOR, _add, _options
from .test_privileges import as_role, role

OPTIONS = "model_index_options(boolean)"
ADD_MODEL = "add_model(text, integer, jsonb, text, boolean, interval, bigint)"


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    with Store(settings.database_url or "", settings.schema) as s:
        yield s


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if isinstance(row, tuple) else next(iter(row.values()))


def _add_all_and_build(store: Store, conn: Connection, schema: str) -> None:
    """A model of each type indexed at once and one of each by a daemon: every index
    with its type's options."""
    now = {h: _add(store, f"now-{h}", halfvec=h, deferred=False) for h in (True, False)}
    later = {h: _add(store, f"later-{h}", halfvec=h, deferred=True) for h in (True, False)}
    assert IndexBuilder(store).build_due() == 2
    for models in (now, later):
        assert _options(conn, models[True], schema) == HALFVEC
        assert _options(conn, models[False], schema) == VECTOR


def _plant(attacker: psycopg.Connection[Any], schema: str, signature: str) -> None:
    """A function of the attacker's that records who ran it and returns other options."""
    attacker.execute(
        sql.SQL(
            "CREATE FUNCTION {}.model_index_options({}) LANGUAGE plpgsql AS $$ BEGIN"
            " INSERT INTO public.hits VALUES (current_user, {}); m := 2; ef_construction := 4;"
            " END $$"
        ).format(sql.Identifier(schema), sql.SQL(signature), sql.Literal(signature))
    )
    attacker.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION {}.model_index_options({}) TO PUBLIC").format(
            sql.Identifier(schema), sql.SQL(signature.replace(" DEFAULT 0", ""))
        )
    )


def _hits_table(attacker: psycopg.Connection[Any]) -> None:
    attacker.execute("CREATE TABLE public.hits (who text, what text)")
    attacker.execute("GRANT INSERT ON public.hits TO PUBLIC")


OUT = ", OUT m integer, OUT ef_construction integer"
#: Overloads that resolve to the owner's function for a boolean argument.
LOSERS = [
    "VARIADIC h boolean[]" + OUT,
    "h anyelement" + OUT,
    "h text" + OUT,
    "h public.flag" + OUT,  # a domain over boolean
]


# --- 1. who may run it ---------------------------------------------------------------


def test_no_role_but_the_owner_may_run_the_options_or_what_calls_them(
    conn: Connection, database: str
) -> None:
    """PUBLIC has no EXECUTE on model_index_options; its ACL names the owner alone; it
    and add_model keep their pinned search_path and run as their caller.  A plain, a
    searching, a writing role and one that may create in the schema may not run it,
    nor any function whose body calls it, and no view reads it."""
    for signature in (OPTIONS, ADD_MODEL):
        row = conn.execute(
            "SELECT p.prosecdef, p.proconfig, p.proowner = c.relowner AS owners,"
            " ARRAY(SELECT a.grantee FROM aclexplode(p.proacl) a) = ARRAY[c.relowner] AS acl"
            " FROM pg_proc p, pg_class c"
            " WHERE p.oid = to_regprocedure(%s) AND c.oid = 'models'::regclass",
            (signature,),
        ).fetchone()
        assert row == {
            "prosecdef": False,
            "proconfig": ["search_path=pg_catalog, pg_temp"],
            "owners": True,
            "acl": True,
        }, signature
    callers = [
        r["f"]
        for r in conn.execute(
            "SELECT p.oid::regprocedure::text AS f FROM pg_proc p"
            " WHERE p.prosrc LIKE '%%model_index_options%%' ORDER BY 1"
        ).fetchall()
    ]
    assert callers == [ADD_MODEL.replace(", ", ","), OPTIONS]
    assert (
        _one(conn, "SELECT count(*) FROM pg_views WHERE definition LIKE '%%model_index_options%%'")
        == 0
    )
    for grant in (None, "grant_search", "grant_write", "create"):
        with role(conn, database) as (name, dsn):
            if grant == "create":
                conn.execute(
                    sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name))
                )
            elif grant is not None:
                conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(grant)), (name,))
            for signature in callers:
                assert (
                    _one(
                        conn,
                        "SELECT has_function_privilege(%s, %s, 'EXECUTE')",
                        (name, signature),
                    )
                    is False
                ), (grant, signature)
            with as_role(dsn) as attacker:
                for statement in (
                    "SELECT model_index_options(true)",
                    "SELECT public.model_index_options(halfvec => false)",
                    "SELECT add_model('x', 3, '{}', 'x', true, '1s', 0)",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        attacker.execute(statement)


# --- 2. overloads where it is looked up ----------------------------------------------


def test_overloads_planted_in_the_indexers_schema_never_run(
    conn: Connection, database: str, store: Store
) -> None:
    """A role that may create in the indexer's schema (public) plants overloads of
    model_index_options that return other options.  Those that also take a boolean
    lose to the owner's exact match: add_model and the daemon's build use the owner's,
    and none of them runs.  One whose extra argument has a default makes the call
    ambiguous: add_model fails whole (no model, no table: the caller is told) and the
    daemon builds nothing; neither runs it.  (A denial, as an overload with a default of
    any of the indexer's functions is, from a role that may create in its schema: the
    roles guide revokes CREATE.)"""
    with role(conn, database) as (name, dsn):
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        with as_role(dsn) as attacker:
            _hits_table(attacker)
            attacker.execute("CREATE DOMAIN public.flag AS boolean")
            for signature in LOSERS:
                _plant(attacker, "public", signature)
            _add_all_and_build(store, conn, "public")
            assert attacker.execute("SELECT * FROM public.hits").fetchall() == []

            deferred = _add(store, "deferred", halfvec=True, deferred=True)
            _plant(attacker, "public", "halfvec boolean, x integer DEFAULT 0" + OUT)
            tables = "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'model%%'"
            before = _one(conn, tables)
            with Store(database, "public") as fresh:  # sessions with no plan cached
                with pytest.raises(psycopg.errors.AmbiguousFunction):
                    _add(fresh, "ambiguous", halfvec=True, deferred=False)
                assert [m.name for m in fresh.models() if m.name == "ambiguous"] == []
                with pytest.raises(psycopg.errors.AmbiguousFunction):
                    IndexBuilder(fresh).build_due()
            assert _one(conn, tables) == before
            assert _options(conn, deferred) is None
            assert attacker.execute("SELECT * FROM public.hits").fetchall() == []
            # The traps work: called by the attacker, an overload runs.
            attacker.execute("SELECT public.model_index_options(true::public.flag)")
            assert attacker.execute("SELECT * FROM public.hits").fetchall() == [
                (name, "h public.flag" + OUT)
            ]
            attacker.execute("DROP FUNCTION public.model_index_options(boolean, integer)")
    assert IndexBuilder(store).build_due() == 1
    assert _options(conn, deferred) == HALFVEC


def test_a_function_of_its_name_in_public_never_runs_for_an_indexer_in_its_own_schema(
    conn: Connection, database: str
) -> None:
    """The indexer in schema ix, public on the daemon's search_path: a role that may
    create in public plants model_index_options(boolean) itself there (and overloads).
    add_model and the daemon's build name the function with its schema: neither runs
    the attacker's, and every index has its type's options."""
    migrate.upgrade(database, "ix")
    # public's indexer (the template's) would hold the name there: its function goes.
    conn.execute("DROP FUNCTION public.model_index_options(boolean)")
    with role(conn, database) as (name, dsn):
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        with as_role(dsn) as attacker:
            _hits_table(attacker)
            attacker.execute("CREATE DOMAIN public.flag AS boolean")
            for signature in ["halfvec boolean" + OUT, *LOSERS]:
                _plant(attacker, "public", signature)
            with Store(database, "ix") as store:
                _add_all_and_build(store, conn, "ix")
            assert attacker.execute("SELECT * FROM public.hits").fetchall() == []
            attacker.execute("SELECT public.model_index_options(true)")
            assert attacker.execute("SELECT * FROM public.hits").fetchall() == [
                (name, "halfvec boolean" + OUT)
            ]


# --- 3. the downgrade and the upgrade again ------------------------------------------


def test_the_name_freed_by_a_downgrade_is_not_taken_over_by_the_upgrade(
    conn: Connection, database: str, store: Store
) -> None:
    """The downgrade drops the function and gives back 0011's add_model (still the
    owner's alone, pinned search_path, calling nothing of 0012).  A role that may create
    in the schema then plants model_index_options(boolean) under the freed name: the
    upgrade again fails (it creates the function, never replaces one) and leaves 0011 as
    it was; once the role's function is gone, it succeeds, and the function is the
    owner's."""
    store.close()
    migrate.downgrade(database, "public", "0011")
    assert _one(conn, "SELECT to_regprocedure(%s)", (OPTIONS,)) is None
    row = conn.execute(
        "SELECT p.proconfig, p.prosrc LIKE '%%model_index_options%%' AS calls,"
        " has_function_privilege('public', p.oid, 'EXECUTE') AS public"
        " FROM pg_proc p WHERE p.oid = to_regprocedure(%s)",
        (ADD_MODEL,),
    ).fetchone()
    assert row == {
        "proconfig": ["search_path=pg_catalog, pg_temp"],
        "calls": False,
        "public": False,
    }
    with role(conn, database) as (name, dsn):
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        with as_role(dsn) as attacker:
            _hits_table(attacker)
            _plant(attacker, "public", "halfvec boolean" + OUT)
            with pytest.raises(Exception, match="already exists"):
                migrate.upgrade(database, "public")
            assert _one(conn, "SELECT version_num FROM alembic_version") == "0011"
            assert (
                _one(
                    conn,
                    "SELECT prosrc LIKE '%%model_index_options%%' FROM pg_proc"
                    " WHERE oid = to_regprocedure(%s)",
                    (ADD_MODEL,),
                )
                is False
            )
            with Store(database, "public", check=False) as old:
                model_id = _add(old, "old", halfvec=True, deferred=False)
            assert _options(conn, model_id) == VECTOR
            assert attacker.execute("SELECT * FROM public.hits").fetchall() == []
            attacker.execute("DROP FUNCTION public.model_index_options(boolean)")
    migrate.upgrade(database, "public")
    assert _one(
        conn,
        "SELECT p.proowner = c.relowner FROM pg_proc p, pg_class c"
        " WHERE p.oid = to_regprocedure(%s) AND c.oid = 'models'::regclass",
        (OPTIONS,),
    )
    with Store(database, "public") as new:
        assert _options(conn, _add(new, "new", halfvec=True, deferred=False)) == HALFVEC
