"""Privilege boundaries, tried with real roles on the real server, the way a hostile
role would: the trigger function, the owner's code in a source table, search as roles
with different grants and policies, functions called from another schema, locks on
the application's table, and removal by a role that does not own the table."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from indexer.db import migrate
from indexer.db.connect import Connection
from indexer.exceptions import SourceError
from indexer.store import Store
from indexer.store import sources as store_sources

from ..helpers import wait_until
from .test_sources_sql import apply_changes

DIM = 384


def vector(n: int) -> str:
    """A unit vector along axis n (n < DIM)."""
    return "[" + ",".join("1" if i == n else "0" for i in range(DIM)) + "]"


@contextlib.contextmanager
def role(conn: Connection, database: str, options: str = "") -> Iterator[tuple[str, str]]:
    """A LOGIN role (roles are the server's: a fresh name each time) and its DSN."""
    name = "p_" + uuid.uuid4().hex[:12]
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN " + options).format(sql.Identifier(name)))
    try:
        yield name, make_conninfo(database, user=name)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def documents_of(conn: Connection, source: str) -> list[str]:
    """The source's documents, once the triggers' changes are applied (as a daemon
    does)."""
    apply_changes(conn)
    rows = conn.execute(
        "SELECT d.doc_key FROM source_documents d JOIN sources s ON s.id = d.source_id"
        " WHERE s.name = %s ORDER BY d.doc_key",
        (source,),
    ).fetchall()
    return [r["doc_key"] for r in rows]


def source_id(conn: Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM sources WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row["id"])


# --- the trigger function ------------------------------------------------------------


def test_a_role_may_not_attach_the_trigger_function_to_a_table_of_its_own(
    conn: Connection, database: str
) -> None:
    with role(conn, database) as (_, dsn), as_role(dsn) as evil:
        evil.execute("CREATE TEMP TABLE t (id text)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="source_changed"):
            evil.execute(
                "CREATE TRIGGER x AFTER INSERT ON t REFERENCING NEW TABLE AS new_rows"
                " FOR EACH STATEMENT EXECUTE FUNCTION public.source_changed('1')"
            )


def test_a_trigger_attached_before_the_revoke_runs_no_code_and_touches_nothing(
    conn: Connection, database: str
) -> None:
    conn.execute("CREATE TABLE notes (id text PRIMARY KEY, body text)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO notes VALUES ('k', 'kept'), ('j', 'kept too')")
    source = source_id(conn, "public.notes")
    with role(conn, database) as (name, dsn), as_role(dsn) as evil:
        # As it could before this version: EXECUTE was PUBLIC's.
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION source_changed() TO {}").format(sql.Identifier(name))
        )
        notices: list[str] = []
        evil.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        evil.execute("CREATE TYPE pg_temp.mt AS (v text)")
        evil.execute(
            "CREATE FUNCTION pg_temp.mt_text(x pg_temp.mt) RETURNS text LANGUAGE plpgsql AS"
            " $f$ BEGIN RAISE NOTICE 'running as %', current_user; RETURN 'k'; END $f$"
        )
        evil.execute("CREATE CAST (pg_temp.mt AS text) WITH FUNCTION pg_temp.mt_text(pg_temp.mt)")
        evil.execute("CREATE TEMP TABLE t (id pg_temp.mt)")
        evil.execute("CREATE TEMP TABLE u (id text)")
        for table, args in (("t", source), ("u", source)):
            for op, ref in (
                ("INSERT", "REFERENCING NEW TABLE AS new_rows"),
                ("DELETE", "REFERENCING OLD TABLE AS old_rows"),
            ):
                evil.execute(
                    f"CREATE TRIGGER x_{op} AFTER {op} ON {table} {ref} FOR EACH STATEMENT"
                    f" EXECUTE FUNCTION public.source_changed('{args}')"
                )
            evil.execute(
                f"CREATE TRIGGER x_truncate AFTER TRUNCATE ON {table} FOR EACH STATEMENT"
                f" EXECUTE FUNCTION public.source_changed('{args}')"
            )
        conn.execute(
            sql.SQL("REVOKE EXECUTE ON FUNCTION source_changed() FROM {}").format(
                sql.Identifier(name)
            )
        )
        evil.execute("INSERT INTO t VALUES (row('k'))")
        evil.execute("DELETE FROM t")
        evil.execute("INSERT INTO u VALUES ('bogus'), ('k')")
        evil.execute("DELETE FROM u WHERE id = 'k'")
        evil.execute("TRUNCATE t")
        evil.execute("TRUNCATE u")
        assert not [n for n in notices if "running as" in n]
        evil.execute("DISCARD TEMP")  # its temporary objects go now, not as it disconnects
    assert documents_of(conn, "public.notes") == ["j", "k"]


def test_the_upgrade_drops_triggers_that_are_not_a_sources(conn: Connection, database: str) -> None:
    migrate.downgrade(database, "public", "0005")
    conn.execute("CREATE TABLE stray (id text)")
    conn.execute(
        "CREATE TRIGGER x AFTER INSERT ON stray REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION source_changed('1')"
    )
    migrate.upgrade(database, "public")
    triggers = conn.execute(
        "SELECT tgrelid::regclass::text AS rel, tgname FROM pg_trigger"
        " WHERE tgfoid = 'source_changed()'::regprocedure ORDER BY 1, 2"
    ).fetchall()
    assert {r["rel"] for r in triggers} == {"documents"}
    assert len(triggers) == 4


# --- the source table's owner's code --------------------------------------------------


@pytest.fixture
def indexer_role(conn: Connection, database: str) -> Iterator[tuple[str, str]]:
    """A role that is no superuser, owning the indexer's schema ``ix`` (it migrated it)."""
    with role(conn, database) as (name, dsn):
        db = conninfo_to_dict(database)["dbname"]
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(str(db)), sql.Identifier(name)
            )
        )
        migrate.upgrade(dsn, "ix")
        yield name, dsn


@pytest.fixture
def tenant(
    conn: Connection, database: str, indexer_role: tuple[str, str]
) -> Iterator[tuple[str, str]]:
    """A role owning schema tenant_b (the indexer's role may use it), with a spy table
    anyone may insert into and ``tenant_b.leak()``, which records who runs it there."""
    with role(conn, database) as (name, dsn):
        conn.execute(
            sql.SQL("CREATE SCHEMA tenant_b AUTHORIZATION {}").format(sql.Identifier(name))
        )
        with as_role(dsn) as b:
            b.execute("CREATE TABLE tenant_b.spy (who text)")
            b.execute("GRANT INSERT ON tenant_b.spy TO PUBLIC")
            b.execute(
                "CREATE FUNCTION tenant_b.leak() RETURNS boolean LANGUAGE plpgsql AS"
                " $f$ BEGIN INSERT INTO tenant_b.spy VALUES (current_user); RETURN true;"
                " END $f$"
            )
            b.execute(
                sql.SQL("GRANT USAGE ON SCHEMA tenant_b TO {}").format(
                    sql.Identifier(indexer_role[0])
                )
            )
        yield name, dsn


def test_the_indexer_never_runs_the_table_owners_code(
    conn: Connection, indexer_role: tuple[str, str], tenant: tuple[str, str]
) -> None:
    ix_name, ix_dsn = indexer_role
    tenant_dsn = tenant[1]
    with as_role(tenant_dsn) as b:
        b.execute("CREATE TYPE tenant_b.label AS ENUM ('red', 'blue')")
        b.execute(
            "CREATE FUNCTION tenant_b.label_json(tenant_b.label) RETURNS json"
            " LANGUAGE plpgsql AS $f$ BEGIN PERFORM tenant_b.leak(); RETURN '1'; END $f$"
        )
        b.execute(
            "CREATE CAST (tenant_b.label AS json) WITH FUNCTION tenant_b.label_json(tenant_b.label)"
        )
        b.execute("CREATE TYPE tenant_b.txt AS (v text)")
        b.execute(
            "CREATE FUNCTION tenant_b.txt_text(tenant_b.txt) RETURNS text"
            " LANGUAGE plpgsql AS $f$ BEGIN PERFORM tenant_b.leak(); RETURN 'x'; END $f$"
        )
        b.execute(
            "CREATE CAST (tenant_b.txt AS text) WITH FUNCTION tenant_b.txt_text(tenant_b.txt)"
        )
        b.execute(
            "CREATE TABLE tenant_b.notes (id bigint PRIMARY KEY, body text,"
            " extra tenant_b.txt, tag tenant_b.label)"
        )
        b.execute("INSERT INTO tenant_b.notes VALUES (1, 'one', row('more'), 'red')")
        b.execute(
            sql.SQL("GRANT SELECT, TRIGGER ON tenant_b.notes TO {}").format(sql.Identifier(ix_name))
        )
    with Store(ix_dsn, "ix") as store:
        store.add_source("tenant_b.notes", text=["body", "extra"], metadata=["tag"])
        with as_role(ix_dsn) as ix:
            row = ix.execute("SELECT id FROM ix.sources WHERE NOT builtin").fetchone()
        assert row is not None
        source = int(row[0])
        texts = store.source_texts(source, ["1"], 1000)
        assert [(t.key, t.text, t.metadata) for t in texts] == [
            ("1", "one\n\n(more)", {"tag": "red"})
        ]
        with as_role(tenant_dsn) as b:
            b.execute("INSERT INTO tenant_b.notes VALUES (2, 'two', row('x'), 'blue')")
            b.execute("UPDATE tenant_b.notes SET extra = row('changed') WHERE id = 1")
            b.execute("ALTER TABLE tenant_b.notes ENABLE ROW LEVEL SECURITY")
            b.execute("CREATE POLICY p ON tenant_b.notes USING (tenant_b.leak())")
        with pytest.raises(SourceError, match=r"row-level security on tenant_b\.notes"):
            store.source_texts(source, ["1"], 1000)
        with pytest.raises(SourceError, match=r"row-level security on tenant_b\.notes") as e:
            store.backfill_source(source, 10)
        assert "\n" not in str(e.value)
        with as_role(tenant_dsn) as b:
            b.execute("CREATE TABLE tenant_b.more (id bigint PRIMARY KEY, body text)")
            b.execute("ALTER TABLE tenant_b.more ENABLE ROW LEVEL SECURITY")
            b.execute("CREATE POLICY p ON tenant_b.more USING (tenant_b.leak())")
            b.execute(
                sql.SQL("GRANT SELECT, TRIGGER ON tenant_b.more TO {}").format(
                    sql.Identifier(ix_name)
                )
            )
        with pytest.raises(SourceError) as refused:
            store.add_source("tenant_b.more", text=["body"])
        assert str(refused.value).startswith(
            f"row-level security on tenant_b.more applies to role {ix_name}:"
        )
    with as_role(ix_dsn) as ix:
        ix.execute("SELECT ix.apply_source_changes()")
        queued = ix.execute(
            "SELECT doc_key, version FROM ix.source_documents ORDER BY doc_key"
        ).fetchall()
    assert queued == [("1", 1), ("2", 1)]  # 1: queued by the update of extra alone
    spied = conn.execute("SELECT who FROM tenant_b.spy").fetchall()
    assert spied == []


# --- search as roles ------------------------------------------------------------------


def add_passages(conn: Connection, source: str) -> None:
    """What the daemon writes for each document of ``source``: one passage, with a
    vector along the axis of its row number."""
    apply_changes(conn)
    conn.execute(
        "INSERT INTO chunks (content, embedding, document_id, source_id, doc_key, position,"
        " char_start, char_end)"
        " SELECT 'passage of ' || d.doc_key, %s::vector, d.id, d.source_id, d.doc_key,"
        " 0, 0, 5 FROM source_documents d JOIN sources s ON s.id = d.source_id"
        " WHERE s.name = %s",
        (vector(0), source),
    )
    conn.execute(
        "UPDATE source_documents d SET state = 'indexed' FROM sources s"
        " WHERE s.id = d.source_id AND s.name = %s",
        (source,),
    )


def test_search_shows_each_role_only_the_passages_of_rows_it_may_read(
    conn: Connection, database: str
) -> None:
    conn.execute("CREATE TABLE notes_a (id bigint PRIMARY KEY, body text)")
    conn.execute("CREATE TABLE tickets (id bigint PRIMARY KEY, tenant text, body text)")
    conn.execute("SELECT add_source('notes_a', NULL, ARRAY['body'])")
    conn.execute("SELECT add_source('tickets', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO notes_a VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    conn.execute("INSERT INTO chunks (content, embedding) VALUES ('a row', %s)", (vector(0),))
    with role(conn, database) as (reader, reader_dsn), role(conn, database) as (other, other_dsn):
        conn.execute(
            "INSERT INTO tickets VALUES (1, %s, 'x'), (2, %s, 'y'), (3, 'nobody', 'z')",
            (reader, other),
        )
        add_passages(conn, "public.notes_a")
        add_passages(conn, "public.tickets")
        conn.execute("ALTER TABLE tickets ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY own ON tickets USING (tenant = current_user)")
        for name in (reader, other):
            conn.execute("SELECT grant_search(%s)", (name,))
            conn.execute(sql.SQL("GRANT SELECT ON tickets TO {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("GRANT SELECT ON notes_a TO {}").format(sql.Identifier(other)))

        def seen(dsn: str) -> tuple[list[tuple[str, str]], int, list[int]]:
            with as_role(dsn) as c:
                docs = c.execute(
                    "SELECT source, key FROM search_documents(%s::vector, 10) ORDER BY 1, 2",
                    (vector(0),),
                ).fetchall()
                (passages,) = c.execute(
                    "SELECT count(*) FROM chunks WHERE document_id IS NOT NULL"
                ).fetchone() or (0,)
                rows = [
                    r[0]
                    for r in c.execute("SELECT id FROM search_chunks(%s::vector, 10)", (vector(0),))
                ]
            return docs, passages, rows

        docs, passages, rows = seen(reader_dsn)
        assert docs == [("public.tickets", "1")]
        assert passages == 1
        assert len(rows) == 1  # its row: rows are not passages
        docs, passages, _ = seen(other_dsn)
        assert docs == [
            ("public.notes_a", "1"),
            ("public.notes_a", "2"),
            ("public.notes_a", "3"),
            ("public.tickets", "2"),
        ]
        assert passages == 4
        with Store(reader_dsn, "public") as store:
            hits = store.search_documents(np.eye(DIM, dtype=np.float32)[0], 10)
        assert [(h.source, h.key) for h in hits] == [("public.tickets", "1")]
        # A role may insert rows, never forge passages.
        conn.execute("SELECT grant_write(%s)", (reader,))
        doc = conn.execute("SELECT id, source_id FROM source_documents LIMIT 1").fetchone()
        assert doc is not None
        with as_role(reader_dsn) as c:
            c.execute("INSERT INTO chunks (content) VALUES ('mine')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                c.execute(
                    "INSERT INTO chunks (content, document_id, source_id, doc_key)"
                    " VALUES ('forged', %s, %s, '1')",
                    (doc["id"], doc["source_id"]),
                )


# --- every function acts on its own schema --------------------------------------------


def test_functions_act_on_their_own_schema_whatever_the_search_path(
    conn: Connection, database: str
) -> None:
    migrate.upgrade(database, "nc3")
    conn.execute(
        "INSERT INTO public.chunks (content, embedding) VALUES ('public row', %s)", (vector(0),)
    )
    conn.execute("INSERT INTO nc3.chunks (content, embedding) VALUES ('nc3 row', %s)", (vector(0),))
    conn.execute("CREATE TABLE public.t (id bigint PRIMARY KEY, body text)")
    conn.execute("SET search_path = public")
    rows = conn.execute(
        "SELECT content FROM nc3.search_chunks(%s::public.vector, 10)", (vector(0),)
    ).fetchall()
    assert [r["content"] for r in rows] == ["nc3 row"]
    conn.execute("SELECT nc3.add_source('public.t', NULL, ARRAY['body'])")
    assert conn.execute("SELECT name FROM nc3.sources WHERE NOT builtin").fetchall() == [
        {"name": "public.t"}
    ]
    assert conn.execute("SELECT name FROM public.sources WHERE NOT builtin").fetchall() == []
    conn.execute("INSERT INTO public.t VALUES (1, 'one')")
    conn.execute("SELECT nc3.apply_source_changes()")
    assert conn.execute("SELECT count(*) AS n FROM nc3.source_documents").fetchone() == {"n": 1}
    conn.execute("SET search_path = pg_catalog")
    found = conn.execute(
        "SELECT count(*) AS n FROM nc3.search_documents(%s::public.vector, 5)", (vector(0),)
    ).fetchone()
    assert found == {"n": 0}
    conn.execute("SELECT nc3.remove_source('public.t')")


# --- locks on the application's table -------------------------------------------------


def test_adding_and_removing_a_source_never_queue_the_application(
    conn: Connection, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_sources, "LOCK_TRIES", 3)
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    with (
        psycopg.connect(database) as app,
        psycopg.connect(database, autocommit=True) as other,
        Store(database, "public") as store,
    ):
        app.execute("INSERT INTO notes VALUES (1, 'open transaction')")  # holds its lock
        failure: list[BaseException] = []
        adding = threading.Thread(
            target=lambda: _catch(failure, lambda: store.add_source("notes", text=["body"]))
        )
        adding.start()
        # While add_source tries, the other sessions' writes go through: it never holds
        # its place in the lock queue for longer than one short wait.  (The bound on
        # this INSERT is only there to turn a stall into a failure, not a measurement.)
        other.execute("SET statement_timeout = '30s'")
        for n in range(2, 6):
            other.execute("INSERT INTO notes VALUES (%s, 'meanwhile')", (n,))
        adding.join()
        assert len(failure) == 1 and isinstance(failure[0], SourceError)
        assert str(failure[0]).startswith(
            "cannot add source notes: a transaction of the application holds a lock"
        )
        app.commit()
        store.add_source("notes", text=["body"])
        app.execute("SELECT * FROM notes")  # a reader, in a transaction left open
        removing = threading.Thread(
            target=lambda: _catch(failure, lambda: store.remove_source("public.notes"))
        )
        removing.start()
        for _ in range(4):
            assert other.execute("SELECT count(*) FROM notes").fetchone() == (5,)
        removing.join()
        assert len(failure) == 2 and str(failure[1]).startswith(
            "cannot remove source public.notes: a transaction of the application holds a lock"
        )
        app.commit()
        store.remove_source("public.notes")


def _catch(into: list[BaseException], call: Any) -> None:
    try:
        call()
    except BaseException as exc:
        into.append(exc)


# --- removal by a role that does not own the table ------------------------------------


def test_a_role_that_does_not_own_the_table_removes_its_source(
    conn: Connection,
    database: str,
    indexer_role: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ix_name, ix_dsn = indexer_role
    with role(conn, database) as (owner, owner_dsn):
        conn.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(owner)))
        with as_role(owner_dsn) as app:
            app.execute("CREATE TABLE app.notes (id bigint PRIMARY KEY, body text)")
            app.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(sql.Identifier(ix_name)))
            app.execute(
                sql.SQL("GRANT SELECT, TRIGGER ON app.notes TO {}").format(sql.Identifier(ix_name))
            )
        with Store(ix_dsn, "ix") as store:
            store.add_source("app.notes", text=["body"])
            with as_role(owner_dsn) as app:
                app.execute("INSERT INTO app.notes VALUES (1, 'one')")
            with caplog.at_level(logging.WARNING):
                store.remove_source("app.notes")
            assert [r.message for r in caplog.records if "stay" in r.message] == [
                f"the triggers on app.notes stay (only its owner, {owner}, may drop them; they "
                "do nothing now): DROP TRIGGER indexer_source_insert ON app.notes; DROP TRIGGER"
                " indexer_source_update ON app.notes; DROP TRIGGER indexer_source_delete ON"
                " app.notes; DROP TRIGGER indexer_source_truncate ON app.notes;"
            ]
            assert [s["source"] for s in store.source_status()] == ["documents"]
            with as_role(owner_dsn) as app:
                app.execute("INSERT INTO app.notes VALUES (2, 'two')")  # inert triggers
                app.execute("DELETE FROM app.notes WHERE id = 1")
            store.add_source("app.notes", text=["body"])  # again, over the old triggers
            with as_role(owner_dsn) as app:
                app.execute("INSERT INTO app.notes VALUES (3, 'three')")
        with as_role(ix_dsn) as ix:
            ix.execute("SELECT ix.apply_source_changes()")
            keys = ix.execute(
                "SELECT doc_key FROM ix.source_documents d JOIN ix.sources s"
                " ON s.id = d.source_id WHERE s.name = 'app.notes'"
            ).fetchall()
        assert keys == [("3",)]


def test_a_column_changed_while_the_daemon_waits_runs_none_of_the_owners_code(
    conn: Connection, indexer_role: tuple[str, str], tenant: tuple[str, str]
) -> None:
    ix_name, ix_dsn = indexer_role
    tenant_dsn = tenant[1]
    with as_role(tenant_dsn) as b:
        b.execute("CREATE TYPE tenant_b.mt AS (v text)")
        b.execute(
            "CREATE FUNCTION tenant_b.mt_text(tenant_b.mt) RETURNS text LANGUAGE plpgsql AS"
            " $f$ BEGIN PERFORM tenant_b.leak(); RETURN 'x'; END $f$"
        )
        b.execute("CREATE CAST (tenant_b.mt AS text) WITH FUNCTION tenant_b.mt_text(tenant_b.mt)")
        b.execute("CREATE TABLE tenant_b.notes (id bigint PRIMARY KEY, body text)")
        b.execute("INSERT INTO tenant_b.notes VALUES (1, 'one')")
        b.execute(
            sql.SQL("GRANT SELECT, TRIGGER ON tenant_b.notes TO {}").format(sql.Identifier(ix_name))
        )
    with Store(ix_dsn, "ix") as store:
        store.add_source("tenant_b.notes", text=["body"])
        with as_role(ix_dsn) as ix:
            (source,) = ix.execute("SELECT id FROM ix.sources WHERE NOT builtin").fetchone() or (0,)
        with psycopg.connect(tenant_dsn) as a:  # one transaction, committed below
            a.execute("ALTER TABLE tenant_b.notes RENAME COLUMN body TO body_old")
            a.execute("ALTER TABLE tenant_b.notes ADD COLUMN body tenant_b.mt DEFAULT row('x')")
            outcome: list[Any] = []
            reader = threading.Thread(
                target=lambda: _catch(
                    outcome, lambda: outcome.append(store.source_texts(source, ["1"], 1000))
                )
            )
            reader.start()
            # The daemon's read waits for the table: commit then (it may also give up).
            wait_until(
                lambda: (
                    conn.execute(
                        "SELECT count(*) AS n FROM pg_locks"
                        " WHERE relation = 'tenant_b.notes'::regclass AND NOT granted"
                    ).fetchone()
                    == {"n": 1}
                    or not reader.is_alive()
                ),
                timeout=60,
            )
            a.commit()
            reader.join()
    assert len(outcome) == 1
    assert conn.execute("SELECT who FROM tenant_b.spy").fetchall() == []


def test_search_hides_what_the_table_no_longer_shows(conn: Connection, database: str) -> None:
    conn.execute("CREATE SCHEMA app")
    conn.execute(
        "CREATE TABLE app.notes (id bigint PRIMARY KEY, body text, secret text, hidden boolean)"
    )
    conn.execute("SELECT add_source('app.notes', NULL, ARRAY['body', 'secret'])")
    conn.execute("CREATE TABLE app.tickets (id bigint PRIMARY KEY, body text, hidden boolean)")
    conn.execute("SELECT add_source('app.tickets', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO app.notes VALUES (1, 'body', 'SSN-1', false)")
    conn.execute("INSERT INTO app.tickets VALUES (1, 'TOP SECRET merger', true)")
    add_passages(conn, "app.notes")
    add_passages(conn, "app.tickets")
    conn.execute("ALTER TABLE app.tickets ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY visible ON app.tickets USING (NOT hidden)")
    with role(conn, database) as (reader, reader_dsn):
        ident = sql.Identifier(reader)
        conn.execute("SELECT grant_search(%s)", (reader,))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(ident))
        conn.execute(sql.SQL("GRANT SELECT (id, body) ON app.notes TO {}").format(ident))
        conn.execute(sql.SQL("GRANT SELECT ON app.tickets TO {}").format(ident))

        def found() -> list[str]:
            with as_role(reader_dsn) as c:
                rows = c.execute(
                    "SELECT content FROM search_documents(%s::vector, 10) ORDER BY 1",
                    (vector(0),),
                ).fetchall()
            return [r[0] for r in rows]

        assert found() == []  # no SELECT on notes.secret; the ticket is hidden by the policy
        conn.execute("ALTER TABLE app.notes DROP COLUMN secret")
        assert found() == []  # the dropped column's text is still in the passage
        # The ticket becomes visible with new text: its old passage stays hidden until
        # the daemon has made the new one.
        conn.execute("UPDATE app.tickets SET hidden = false, body = 'merger' WHERE id = 1")
        assert found() == []
        with as_role(reader_dsn) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT backfill_after FROM sources")  # a key, of any table
        conn.execute("REVOKE USAGE ON SCHEMA app FROM " + reader)  # names from uuid hex
        apply_changes(conn)
        conn.execute("UPDATE source_documents SET state = 'indexed'")
        assert found() == []  # and no error: the schema is out of its reach


# --- the docs' least-privilege recipe, as written ---------------------------------------


def test_the_least_privilege_recipe_works_as_written(conn: Connection, database: str) -> None:
    # docs/how-to/roles.md marks it "not run" for the page's own test: it runs here.
    page = (Path(__file__).resolve().parents[2] / "docs" / "how-to" / "roles.md").read_text(
        encoding="utf-8"
    )
    recipe = re.search(
        r"## Least privilege on your own PostgreSQL\n.*?```postgresql\n(.*?)```", page, re.S
    )
    assert recipe is not None
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TABLE app.notes (id bigint PRIMARY KEY, body text)")
    conn.execute("INSERT INTO app.notes VALUES (1, 'a note')")
    name = "p_" + uuid.uuid4().hex[:12]  # roles are the server's: the recipe's, renamed
    try:
        conn.execute(re.sub(r"\bindexer\b", name, recipe.group(1)))
        ix_dsn = make_conninfo(database, user=name)
        migrate.upgrade(ix_dsn, "ix")
        with Store(ix_dsn, "ix") as store:
            store.add_source("app.notes", text=["body"])
            assert (
                store.backfill_source(next(r["id"] for r in store._execute("backfills_due")), 100)
                == 1
            )
        with role(conn, database) as (reader, reader_dsn):
            with as_role(ix_dsn) as ix:
                ix.execute("SELECT ix.grant_search(%s)", (reader,))
            with as_role(reader_dsn) as c:
                found = c.execute(
                    "SELECT count(*) FROM ix.search_documents(%s::vector, 5)", (vector(0),)
                ).fetchone()
            assert found == (0,)  # nothing indexed yet, and no error
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
