"""SERIALIZABLE applications writing a source's table (migration 0008): the triggers'
bookkeeping creates no read/write dependency between unrelated transactions, and a
deleted row's passages leave search when its transaction commits, before any daemon
has applied the change."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexer.db import migrate
from indexer.db.connect import Connection, connect

from ..helpers import wait_until
from .test_privileges import as_role, role
from .test_sources_sql import add_source, apply_changes, chunk_keys, documents

SESSIONS = 4
ROUNDS = 12
#: Rows of the written table, and how far apart the sessions' keys lie: each session
#: writes rows on heap and index pages of its own, so the application's own statements
#: do not conflict (the control below checks it).
ROWS = 4000
SPREAD = 1000
#: Several passages a document, as long texts have: deleting a document reads more than
#: two chunks rows on one page, which makes PostgreSQL lock the whole page.
PASSAGES = 4
DIM = 384
VECTOR = "[" + ",".join(["1"] + ["0"] * (DIM - 1)) + "]"


def _table(conn: Connection, name: str, rows: int) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, body text)").format(sql.Identifier(name))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT i, repeat('note ', 40) || i FROM generate_series(1, %s) i"
        ).format(sql.Identifier(name)),
        (rows,),
    )
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))


def _indexed_notes(conn: Connection, rows: int, passages: int = 1) -> int:
    """A source ``notes`` of ``rows`` rows, each indexed (as a daemon leaves them) with
    ``passages`` passages."""
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    source = add_source(conn, "notes", None, ["body"])
    conn.execute(
        "INSERT INTO notes SELECT i, repeat('note ', 40) || i FROM generate_series(1, %s) i",
        (rows,),
    )
    conn.execute("ANALYZE notes")
    apply_changes(conn)
    conn.execute(
        "INSERT INTO chunks (content, embedding, document_id, source_id, doc_key, position,"
        " char_start, char_end)"
        " SELECT 'passage', %s, d.id, d.source_id, d.doc_key, p, 0, 7"
        " FROM source_documents d, generate_series(1, %s) p",
        (VECTOR, passages),
    )
    conn.execute("UPDATE source_documents SET state = 'indexed', chunk_count = %s", (passages,))
    return source


def _serialization_failures(
    database: str,
    table: str,
    work: Callable[[psycopg.Connection[Any], sql.Identifier, int], None],
    spread: int = SPREAD,
) -> int:
    """Run ``work(conn, table, key)`` in SESSIONS concurrent SERIALIZABLE transactions
    per round, each on keys of its own, all open at once before any commits; how many of
    them failed to serialize."""
    barrier = threading.Barrier(SESSIONS)
    failures = [0] * SESSIONS
    errors: list[BaseException] = []

    def session(n: int) -> None:
        try:
            with psycopg.connect(database) as app:
                app.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
                for r in range(ROUNDS):
                    try:
                        work(app, sql.Identifier(table), 1 + n * spread + r)
                        barrier.wait(timeout=60)
                        app.commit()
                    except psycopg.errors.SerializationFailure:
                        failures[n] += 1
                        app.rollback()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return sum(failures)


def _waits_for_a_lock(conn: Connection, statement: str) -> bool:
    """Whether a session of this database running a statement LIKE ``statement`` waits
    for a lock: the state a concurrency test waits for, never a time."""
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE %s",
        (statement,),
    ).fetchone()
    return row is not None and row["n"] > 0


def _delete(app: psycopg.Connection[Any], table: sql.Identifier, key: int) -> None:
    app.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (key,))


def _replace(app: psycopg.Connection[Any], table: sql.Identifier, key: int) -> None:
    app.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (key,))
    app.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'rewritten')").format(table), (key,))


def test_concurrent_deletes_of_neighbouring_rows_do_not_fail_each_other(
    conn: Connection, database: str
) -> None:
    """Rows next to each other, whose documents do not exist yet (the back-fill has not
    reached them): the triggers of migration 0006 inserted and deleted their keys in
    source_documents' unique index, on one index page, and 22 of these 48 transactions
    failed; the application's own deletes (the control) fail none."""
    _table(conn, "control", ROWS)
    assert _serialization_failures(database, "control", _delete, spread=ROUNDS) == 0
    _table(conn, "notes", ROWS)
    source = add_source(conn, "notes", None, ["body"])
    assert _serialization_failures(database, "notes", _delete, spread=ROUNDS) == 0
    assert conn.execute("SELECT count(*) AS n FROM notes").fetchone() == {
        "n": ROWS - SESSIONS * ROUNDS
    }
    assert apply_changes(conn) == SESSIONS * ROUNDS
    assert documents(conn, source) == {}


def test_concurrent_delete_and_insert_again_do_not_fail_each_other(
    conn: Connection, database: str
) -> None:
    """Indexed documents of several passages, each session's rows far from the
    others' (so that the application's own inserts do not conflict: the control)."""
    _table(conn, "control", ROWS)
    assert _serialization_failures(database, "control", _replace) == 0
    source = _indexed_notes(conn, ROWS, PASSAGES)
    assert _serialization_failures(database, "notes", _replace) == 0
    docs = documents(conn, source)
    assert len(docs) == ROWS
    rewritten = {str(1 + n * SPREAD + r) for n in range(SESSIONS) for r in range(ROUNDS)}
    assert {k for k, d in docs.items() if d["state"] == "pending"} == rewritten
    assert set(chunk_keys(conn, source)).isdisjoint(rewritten)  # old passages went


def _found(conn: Connection) -> list[str]:
    rows = conn.execute(
        "SELECT key FROM search_documents(%s::vector, 10) ORDER BY key", (VECTOR,)
    ).fetchall()
    return [r["key"] for r in rows]


def _search_then_update(app: psycopg.Connection[Any], table: sql.Identifier, key: int) -> None:
    """An application's transaction: find related documents, then edit its own row."""
    app.execute("SELECT count(*) FROM search_documents(%s::vector, 5)", (VECTOR,))
    app.execute(sql.SQL("UPDATE {} SET body = body || '!' WHERE id = %s").format(table), (key,))


def test_transactions_that_search_then_write_do_not_fail_each_other(
    conn: Connection, database: str
) -> None:
    """Search reads nothing the triggers append: two SERIALIZABLE transactions that each
    search, then write a row of their own, do not form a cycle (when search read the
    changes not applied yet, 36 of these 48 failed)."""
    _table(conn, "control", ROWS)
    assert _serialization_failures(database, "control", _search_then_update) == 0
    _indexed_notes(conn, ROWS)
    assert _serialization_failures(database, "notes", _search_then_update) == 0


def test_a_deleted_rows_passages_leave_search_when_the_change_is_applied(
    conn: Connection, database: str
) -> None:
    source = _indexed_notes(conn, 3, 2)
    conn.execute("INSERT INTO chunks (content) VALUES ('a row of its own')")
    with connect(database, "public", autocommit=False) as writer:
        writer.execute("DELETE FROM notes WHERE id = 1")
        writer.rollback()
        writer.execute("DELETE FROM notes WHERE id <> 3")
        writer.commit()
    # Until a daemon applies the change, search serves what it served before.
    assert _found(conn) == ["1", "2", "3"]
    assert apply_changes(conn) == 2
    assert _found(conn) == ["3"]
    assert set(documents(conn, source)) == {"3"}
    assert chunk_keys(conn, source) == ["3", "3"]
    assert conn.execute("SELECT count(*) AS n FROM chunks WHERE source_id IS NULL").fetchone() == {
        "n": 1
    }


def test_a_truncation_is_applied_first_and_later_rows_survive_it(conn: Connection) -> None:
    source = _indexed_notes(conn, 3, 2)
    conn.execute("TRUNCATE notes")
    conn.execute("INSERT INTO notes VALUES (2, 'back again'), (7, 'new')")
    status = conn.execute(
        "SELECT changes_pending FROM indexer_source_status WHERE source = 'public.notes'"
    ).fetchone()
    assert status == {"changes_pending": 3}
    assert apply_changes(conn) == 3
    assert _found(conn) == []
    docs = documents(conn, source)
    assert {k: (d["state"], d["version"]) for k, d in docs.items()} == {
        "2": ("pending", 1),
        "7": ("pending", 1),
    }
    assert chunk_keys(conn, source) == []


def test_changes_are_applied_in_order_in_batches_and_by_one_caller_at_a_time(
    conn: Connection, database: str
) -> None:
    source = _indexed_notes(conn, 3, 2)
    conn.execute("DELETE FROM notes WHERE id = 1")
    conn.execute("INSERT INTO notes VALUES (1, 'back')")  # after the delete: kept
    conn.execute("UPDATE notes SET body = 'edited' WHERE id = 2")
    conn.execute("DELETE FROM notes WHERE id = 3")
    with connect(database, "public", autocommit=False) as other:
        other.execute("SELECT 1 FROM sources WHERE id = %s FOR NO KEY UPDATE", (source,))
        assert apply_changes(conn) == 0  # another caller is applying this source's
        other.rollback()
    assert conn.execute("SELECT apply_source_changes(2) AS n").fetchone() == {"n": 2}
    assert apply_changes(conn) == 2
    docs = documents(conn, source)
    assert {k: (d["state"], d["version"]) for k, d in docs.items()} == {
        "1": ("pending", 1),  # deleted (with its passages), then a new document
        "2": ("pending", 2),
    }
    assert chunk_keys(conn, source) == ["2", "2"]  # served until its new text is indexed


def test_a_role_that_may_only_connect_cannot_stop_changes_being_applied(
    conn: Connection, database: str
) -> None:
    """Advisory locks are anyone's; the lock apply_source_changes takes (a row of
    sources, FOR NO KEY UPDATE) needs UPDATE on sources."""
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    source = add_source(conn, "notes", None, ["body"])
    with role(conn, database) as (_, dsn), as_role(dsn) as evil:
        evil.execute(
            "SELECT pg_advisory_lock(c.oid::bigint) FROM pg_class c"
            " WHERE c.relname IN ('source_changes', 'sources')"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            evil.execute("SELECT 1 FROM sources FOR NO KEY UPDATE")
        conn.execute("INSERT INTO notes VALUES (1, 'new')")
        assert apply_changes(conn) == 1
        assert set(documents(conn, source)) == {"1"}


def test_a_change_that_cannot_be_applied_holds_up_no_other(conn: Connection) -> None:
    """A key the documents' table refuses (here a constraint added for the test; on a
    server with lz4, a long key the application's session compressed with it) is kept
    with its error, shown as its source's problem, and the other changes go on."""
    conn.execute("CREATE TABLE notes (id text PRIMARY KEY, body text)")
    notes = add_source(conn, "notes", None, ["body"])
    conn.execute("CREATE TABLE other (id bigint PRIMARY KEY, body text)")
    other = add_source(conn, "other", None, ["body"])
    conn.execute("ALTER TABLE source_documents ADD CONSTRAINT refused CHECK (doc_key <> 'bad')")
    conn.execute("INSERT INTO notes VALUES ('good', 'one'), ('bad', 'two'), ('fine', 'three')")
    conn.execute("INSERT INTO other VALUES (1, 'four')")
    assert apply_changes(conn) == 4
    assert set(documents(conn, notes)) == {"good", "fine"}
    assert set(documents(conn, other)) == {"1"}
    assert apply_changes(conn) == 0  # kept, not applied again
    rows = {r["source"]: r for r in conn.execute("SELECT * FROM indexer_source_status")}
    assert rows["public.notes"]["changes_pending"] == 0
    assert rows["public.notes"]["problem"] == (
        '1 change could not be applied (the first: new row for relation "source_documents"'
        ' violates check constraint "refused"); its rows are not indexed'
    )
    assert rows["public.other"]["problem"] is None


def test_a_removed_sources_changes_are_dropped(conn: Connection) -> None:
    _indexed_notes(conn, 1)
    conn.execute("INSERT INTO notes VALUES (2, 'two')")
    conn.execute("SELECT remove_source('public.notes')")
    assert apply_changes(conn) == 1
    assert conn.execute("SELECT count(*) AS n FROM source_documents").fetchone() == {"n": 0}


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            "CREATE TABLE parts (id bigint PRIMARY KEY, body text) PARTITION BY RANGE (id)",
            "its table is partitioned: changes made through its partitions are missed; "
            "a partitioned table cannot be a source: remove it",
        ),
        (
            "CREATE TABLE parts (id timestamptz PRIMARY KEY, body text)",
            "its key column id is of type timestamp with time zone, whose text depends on "
            "session settings: changes written under other settings are missed; remove the "
            "source and add it with a key column of type smallint, integer, bigint, text, "
            "varchar or uuid",
        ),
        (
            "CREATE TABLE whole (id bigint PRIMARY KEY, body text) PARTITION BY RANGE (id);"
            " CREATE TABLE parts PARTITION OF whole FOR VALUES FROM (0) TO (10)",
            "its table is a partition of whole: changes made through that table are missed;"
            " a partition cannot be a source: remove it",
        ),
        (
            "CREATE TABLE parts (id bigint PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, body text)",
            "its key column id has no unique index checked at the end of each statement (an"
            " INITIALLY DEFERRED one lets two rows share a key until commit): changes may be"
            " applied out of order; remove the source and add it with such a key",
        ),
    ],
)
def test_a_source_registered_before_these_checks_shows_its_problem(
    conn: Connection, table: str, problem: str
) -> None:
    """Sources ``sources add`` refuses now (migration 0006) may exist from before: made
    here by registering an accepted table, then changing it behind the indexer's back
    the way an older release allowed."""
    conn.execute(table)
    conn.execute(
        "INSERT INTO sources (name, table_schema, table_name, key_column, key_type,"
        " text_columns, relation, key_attnum, text_attnums)"
        " VALUES ('old', 'public', 'parts', 'id', 'bigint', '{body}', 'parts'::regclass, 1,"
        " '{2}')"
    )
    row = conn.execute("SELECT problem FROM indexer_source_status WHERE source = 'old'").fetchone()
    assert row == {"problem": problem}
    conn.execute("CREATE TABLE fine (id bigint PRIMARY KEY, body text)")
    add_source(conn, "fine", None, ["body"])
    row = conn.execute(
        "SELECT problem FROM indexer_source_status WHERE source = 'public.fine'"
    ).fetchone()
    assert row == {"problem": None}


def test_a_downgrade_applies_every_change_even_one_committed_while_it_waits(
    conn: Connection, database: str
) -> None:
    """Migration 0007's triggers queue documents themselves: the downgrade applies the
    changes first, those of a transaction that commits while it waits for it included."""
    source = _indexed_notes(conn, 3)
    conn.execute("DELETE FROM notes WHERE id = 2")  # pending at the downgrade
    app = connect(database, "public", autocommit=False)
    app.execute("INSERT INTO notes VALUES (500, 'written during the downgrade')")
    app.execute("DELETE FROM notes WHERE id = 1")
    errors: list[BaseException] = []

    def down() -> None:
        try:
            migrate.downgrade(database, "public", "0007")
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    worker = threading.Thread(target=down)
    worker.start()
    try:
        assert wait_until(lambda: _waits_for_a_lock(conn, "%LOCK TABLE%"), 60)
        app.commit()
    finally:
        app.close()
        worker.join(120)
    assert errors == []
    keys = conn.execute(
        "SELECT doc_key FROM source_documents WHERE source_id = %s ORDER BY doc_key", (source,)
    ).fetchall()
    assert [k["doc_key"] for k in keys] == ["3", "500"]
    migrate.upgrade(database, "public")


def test_a_key_checked_at_the_end_of_each_statement_keeps_its_changes_in_order(
    conn: Connection, database: str
) -> None:
    """DEFERRABLE INITIALLY IMMEDIATE (what a key swap in one statement needs): an insert
    of a key whose old row another transaction is deleting waits for it at the end of
    its statement, before the statement's trigger appends, so the changes come in the
    order they were committed."""
    conn.execute(
        "CREATE TABLE notes (id int PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE, body text)"
    )
    source = add_source(conn, "notes", None, ["body"])
    conn.execute("INSERT INTO notes VALUES (5, 'five')")
    apply_changes(conn)
    errors: list[BaseException] = []
    with connect(database, "public", autocommit=False) as deleter:
        deleter.execute("DELETE FROM notes WHERE id = 5")

        def insert() -> None:
            try:
                with connect(database, "public", autocommit=True) as inserter:
                    inserter.execute("INSERT INTO notes VALUES (5, 'new text')")
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        worker = threading.Thread(target=insert)
        worker.start()
        try:
            assert wait_until(lambda: _waits_for_a_lock(conn, "INSERT INTO notes%"), 60)
            deleter.commit()
        finally:
            worker.join(60)
    assert errors == []
    assert set(documents(conn, source)) == {"5"}
    assert documents(conn, source)["5"]["state"] == "pending"
