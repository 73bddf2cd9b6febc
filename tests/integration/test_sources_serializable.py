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

from indexer.db.connect import Connection, connect

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


def test_a_deleted_rows_passages_leave_search_at_commit(conn: Connection, database: str) -> None:
    source = _indexed_notes(conn, 3, 2)
    conn.execute("INSERT INTO chunks (content) VALUES ('a row of its own')")
    with connect(database, "public", autocommit=False) as writer:
        writer.execute("DELETE FROM notes WHERE id = 1")
        assert _found(writer) == ["2", "3"]  # its own transaction sees it gone
        assert _found(conn) == ["1", "2", "3"]  # not committed: the others still find it
        writer.rollback()
        assert _found(writer) == ["1", "2", "3"]
        writer.execute("DELETE FROM notes WHERE id <> 3")
        writer.commit()
    # Committed, and no daemon has applied it yet: not found, though still stored.
    assert _found(conn) == ["3"]
    assert set(chunk_keys(conn, source)) == {"1", "2", "3"}
    assert apply_changes(conn) == 2
    assert set(documents(conn, source)) == {"3"}
    assert chunk_keys(conn, source) == ["3", "3"]
    assert conn.execute("SELECT count(*) AS n FROM chunks WHERE source_id IS NULL").fetchone() == {
        "n": 1
    }


def test_a_truncation_hides_the_source_until_applied_and_later_rows_survive_it(
    conn: Connection,
) -> None:
    source = _indexed_notes(conn, 3, 2)
    conn.execute("TRUNCATE notes")
    assert _found(conn) == []
    conn.execute("INSERT INTO notes VALUES (2, 'back again'), (7, 'new')")
    status = conn.execute(
        "SELECT changes_pending FROM indexer_source_status WHERE source = 'public.notes'"
    ).fetchone()
    assert status == {"changes_pending": 3}
    assert apply_changes(conn) == 3
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
        other.execute("SELECT pg_advisory_xact_lock('source_changes'::regclass::oid::bigint)")
        assert apply_changes(conn) == 0  # another caller is applying them
        other.rollback()
    assert conn.execute("SELECT apply_source_changes(2) AS n").fetchone() == {"n": 2}
    assert apply_changes(conn) == 2
    docs = documents(conn, source)
    assert {k: (d["state"], d["version"]) for k, d in docs.items()} == {
        "1": ("pending", 1),  # deleted (with its passages), then a new document
        "2": ("pending", 2),
    }
    assert chunk_keys(conn, source) == ["2", "2"]  # served until its new text is indexed


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
            "remove the source and add each partition as a source",
        ),
        (
            "CREATE TABLE parts (id timestamptz PRIMARY KEY, body text)",
            "its key column id is of type timestamp with time zone, whose text depends on "
            "session settings: changes written under other settings are missed; remove the "
            "source and add it with a key column of type smallint, integer, bigint, text, "
            "varchar or uuid",
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
