"""Migration 0005 in SQL: backfill_source, remove_source, add_source's refusals, the
migration down and up with a registered source.  Real PostgreSQL, no daemon."""

from __future__ import annotations

import random
import statistics
import threading
import time
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexer.db import migrate
from indexer.db.connect import Connection, connect

from ..helpers import wait_until
from .test_sources_sql import (
    add_chunks,
    add_source,
    apply_changes,
    chunk_keys,
    documents,
    keys_of,
)


def backfill(conn: Connection, source: int, batch: int) -> int | None:
    row = conn.execute("SELECT backfill_source(%s, %s) AS n", (source, batch)).fetchone()
    assert row is not None
    return None if row["n"] is None else int(row["n"])


def triggers(conn: Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
        (table,),
    ).fetchall()
    return {r["tgname"] for r in rows}


FOUR_TRIGGERS = {f"indexer_source_{op}" for op in ("insert", "update", "delete", "truncate")}


# --- backfill_source ----------------------------------------------------------------


def test_backfill_queues_ranges_in_key_order_once(conn: Connection) -> None:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 25) AS i")
    source = add_source(conn, "notes", None, ["body"])
    assert documents(conn, source) == {}  # the rows already there wait for the back-fill
    # Queued by the triggers before the back-fill reaches them: left alone by it.
    conn.execute("UPDATE notes SET body = 'changed' WHERE id = 3")
    apply_changes(conn)  # applied between the two updates: the second queues it again
    conn.execute("UPDATE notes SET body = 'changed again' WHERE id = 3")
    conn.execute("INSERT INTO notes VALUES (30, 'new')")
    assert {k: d["version"] for k, d in documents(conn, source).items()} == {"3": 2, "30": 1}

    assert backfill(conn, source, 10) == 10
    # Key order is the key's own (numeric), not the text's ('10' < '2').
    assert set(documents(conn, source)) == {str(i) for i in range(1, 11)} | {"30"}
    row = conn.execute("SELECT * FROM sources WHERE id = %s", (source,)).fetchone()
    assert row is not None
    assert (row["backfill_after"], row["backfilled"], row["backfill_done_at"]) == ("10", 10, None)
    assert backfill(conn, source, 10) == 10
    assert backfill(conn, source, 10) == 6  # 21..25 and 30
    assert backfill(conn, source, 10) is None
    docs = documents(conn, source)
    assert set(docs) == keys_of(conn, "notes", "id")
    assert docs["3"]["version"] == 2
    assert {d["version"] for k, d in docs.items() if k != "3"} == {1}
    status = conn.execute(
        "SELECT * FROM indexer_source_status WHERE source = 'public.notes'"
    ).fetchone()
    assert status is not None
    assert (status["backfilled"], status["backfilled_rows"], status["pending"]) == (True, 26, 26)


def test_backfill_of_a_text_key_and_an_empty_table(conn: Connection) -> None:
    conn.execute("CREATE TABLE words (w text PRIMARY KEY, body text)")
    conn.execute("INSERT INTO words SELECT 'w' || i, 'x' FROM generate_series(1, 5) AS i")
    conn.execute("CREATE TABLE empty (id uuid PRIMARY KEY, body text)")
    words = add_source(conn, "words", None, ["body"])
    empty = add_source(conn, "empty", None, ["body"])
    assert backfill(conn, words, 3) == 3
    assert backfill(conn, words, 3) == 2
    assert backfill(conn, words, 3) is None
    assert set(documents(conn, words)) == {f"w{i}" for i in range(1, 6)}
    assert backfill(conn, empty, 3) == 0
    assert backfill(conn, empty, 3) is None
    assert backfill(conn, 12345, 3) is None


def test_backfill_skips_a_source_another_transaction_holds(conn: Connection, database: str) -> None:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes SELECT i, 'x' FROM generate_series(1, 5) AS i")
    source = add_source(conn, "notes", None, ["body"])
    with connect(database, "public", autocommit=False) as other:
        other.execute("SELECT * FROM sources WHERE id = %s FOR UPDATE", (source,))
        assert backfill(conn, source, 10) is None
        assert documents(conn, source) == {}
        other.rollback()
    assert backfill(conn, source, 10) == 5


def test_backfill_while_the_table_is_written_keeps_exactly_its_keys(
    conn: Connection, database: str
) -> None:
    rows = 50_000
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text, n integer DEFAULT 0)")
    conn.execute(
        "INSERT INTO notes (id, body) SELECT i, 'note ' || i FROM generate_series(1, %s) AS i",
        (rows,),
    )
    source = add_source(conn, "notes", None, ["body"])
    stop = threading.Event()
    errors: list[BaseException] = []
    writes = [0]

    def write() -> None:
        rng = random.Random(5)
        try:
            with psycopg.connect(database, autocommit=True) as app:
                fresh = rows
                while not stop.is_set():
                    key = rng.randint(1, rows)
                    action = rng.randrange(5)
                    if action == 0:
                        fresh += 1
                        app.execute("INSERT INTO notes (id, body) VALUES (%s, 'new')", (fresh,))
                        app.execute("INSERT INTO notes (id, body) VALUES (%s, 'new')", (-fresh,))
                    elif action == 1:
                        app.execute("UPDATE notes SET body = 'edit' WHERE id = %s", (key,))
                    elif action == 2:
                        app.execute("UPDATE notes SET n = n + 1 WHERE id = %s", (key,))
                    elif action == 3:
                        app.execute("DELETE FROM notes WHERE id IN (%s, %s)", (key, key + 1))
                    else:
                        app.execute("UPDATE notes SET id = -id - 1000000 WHERE id = %s", (key,))
                    writes[0] += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()

    def wrote_since(done: int) -> bool:
        return writes[0] > done or bool(errors)

    try:
        calls = 0
        while backfill(conn, source, 1000) is not None:
            calls += 1
            # The application writes between every two key ranges, whatever the
            # scheduling: the writer really runs alongside the back-fill.
            assert wait_until(partial(wrote_since, writes[0]), 60)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert calls >= rows // 1000
    assert writes[0] >= calls
    found = conn.execute(
        "SELECT count(*) AS n, count(DISTINCT doc_key) AS keys FROM source_documents"
        " WHERE source_id = %s",
        (source,),
    ).fetchone()
    assert found is not None and found["n"] == found["keys"]
    assert set(documents(conn, source)) == keys_of(conn, "notes", "id")


# --- remove_source ------------------------------------------------------------------


@pytest.fixture
def two_sources(conn: Connection) -> tuple[int, int]:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    conn.execute("CREATE TABLE pages (id bigint PRIMARY KEY, body text)")
    notes = add_source(conn, "notes", None, ["body"])
    pages = add_source(conn, "pages", None, ["body"])
    for table in ("notes", "pages"):
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES (1, 'one'), (2, 'two')").format(sql.Identifier(table))
        )
    for source in (notes, pages):
        add_chunks(conn, source, "1", 3)
        add_chunks(conn, source, "2", 2)
    conn.execute("INSERT INTO chunks (content) VALUES ('a row of its own')")
    return notes, pages


def test_remove_source_drops_its_triggers_documents_and_chunks(
    conn: Connection, two_sources: tuple[int, int]
) -> None:
    notes, pages = two_sources
    assert triggers(conn, "notes") == FOUR_TRIGGERS
    row = conn.execute("SELECT remove_source('public.notes') AS n").fetchone()
    assert row == {"n": 5}
    assert triggers(conn, "notes") == set()
    assert triggers(conn, "pages") == FOUR_TRIGGERS
    assert documents(conn, notes) == {}
    assert chunk_keys(conn, notes) == []
    assert set(documents(conn, pages)) == {"1", "2"}
    assert chunk_keys(conn, pages) == ["1", "1", "1", "2", "2"]
    assert conn.execute(
        "SELECT count(*) AS n FROM chunks WHERE document_id IS NULL"
    ).fetchone() == {"n": 1}
    assert conn.execute("SELECT 1 FROM sources WHERE id = %s", (notes,)).fetchall() == []
    # Writes to the table are the table's own business again.
    before = conn.execute("SELECT count(*) AS n FROM source_documents").fetchone()
    conn.execute("INSERT INTO notes VALUES (3, 'three')")
    conn.execute("UPDATE notes SET body = 'ONE'")
    conn.execute("DELETE FROM notes WHERE id = 2")
    conn.execute("TRUNCATE notes")
    assert conn.execute("SELECT count(*) AS n FROM source_documents").fetchone() == before
    # And it can be registered again.
    again = add_source(conn, "notes", None, ["body"])
    conn.execute("INSERT INTO notes VALUES (4, 'four')")
    assert set(documents(conn, again)) == {"4"}


def test_remove_source_of_a_dropped_table(conn: Connection, two_sources: tuple[int, int]) -> None:
    notes, pages = two_sources
    conn.execute("DROP TABLE notes")
    conn.execute("SELECT remove_source('public.notes')")
    assert documents(conn, notes) == {}
    assert chunk_keys(conn, notes) == []
    assert set(documents(conn, pages)) == {"1", "2"}


@pytest.mark.parametrize(
    ("name", "error", "phrase"),
    [
        ("documents", psycopg.errors.FeatureNotSupported, "built-in source"),
        ("no such source", psycopg.errors.UndefinedObject, "no source named no such source"),
        ("notes", psycopg.errors.UndefinedObject, "no source named notes"),
    ],
)
def test_remove_source_refuses(
    conn: Connection, two_sources: tuple[int, int], name: str, error: type[Exception], phrase: str
) -> None:
    with pytest.raises(error, match=phrase):
        conn.execute("SELECT remove_source(%s)", (name,))
    assert triggers(conn, "documents") == FOUR_TRIGGERS
    assert triggers(conn, "notes") == FOUR_TRIGGERS


# --- add_source's refusals ------------------------------------------------------------


@pytest.fixture
def tables(conn: Connection) -> None:
    conn.execute(
        "CREATE TABLE good (id bigint PRIMARY KEY, body text, nickname text UNIQUE,"
        " code text NOT NULL, meta json, extra jsonb)"
    )
    conn.execute("CREATE TABLE no_key (body text)")
    conn.execute("CREATE TABLE two_keys (a int, b int, body text, PRIMARY KEY (a, b))")
    conn.execute(
        "CREATE TABLE partial (id int NOT NULL, body text);"
        " CREATE UNIQUE INDEX ON partial (id) WHERE id > 0"
    )
    conn.execute("CREATE TABLE other (id bigint PRIMARY KEY, body text)")
    conn.execute("CREATE VIEW good_view AS SELECT * FROM good")


REFUSALS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("missing", {}, psycopg.errors.UndefinedTable, 'relation "missing" does not exist'),
    ("a.b.c.d", {}, psycopg.errors.SyntaxError, "improper relation name"),
    ("otherdb.public.good", {}, psycopg.errors.FeatureNotSupported, "cross-database references"),
    ("good_view", {}, psycopg.errors.WrongObjectType, "is not a table"),
    ("no_key", {}, psycopg.errors.InvalidTableDefinition, "has no primary key"),
    ("two_keys", {}, psycopg.errors.InvalidTableDefinition, "primary key of 2 columns"),
    ("good", {"key": "nope"}, psycopg.errors.UndefinedColumn, "has no column nope"),
    ("good", {"key": "nickname"}, psycopg.errors.InvalidTableDefinition, "NOT NULL"),
    ("good", {"key": "code"}, psycopg.errors.InvalidTableDefinition, "is not unique"),
    ("partial", {"key": "id"}, psycopg.errors.InvalidTableDefinition, "is not unique"),
    ("good", {"texts": []}, psycopg.errors.InvalidParameterValue, "at least one text column"),
    ("good", {"texts": None}, psycopg.errors.InvalidParameterValue, "at least one text column"),
    ("good", {"texts": ["nope"]}, psycopg.errors.UndefinedColumn, "has no column nope"),
    ("good", {"metadata": ["nope"]}, psycopg.errors.UndefinedColumn, "has no column nope"),
    ("good", {"json": "nope"}, psycopg.errors.UndefinedColumn, "has no column nope"),
    ("good", {"json": "meta"}, psycopg.errors.DatatypeMismatch, "is not jsonb"),
    ("documents", {}, psycopg.errors.DuplicateObject, "public.documents is already a source"),
    ("chunks", {}, psycopg.errors.InvalidParameterValue, "the indexer's own table"),
    ("sources", {}, psycopg.errors.InvalidParameterValue, "the indexer's own table"),
    ("source_documents", {}, psycopg.errors.InvalidParameterValue, "the indexer's own table"),
]


@pytest.mark.parametrize(
    ("table", "args", "error", "phrase"), REFUSALS, ids=[f"{r[0]}-{r[3]}" for r in REFUSALS]
)
@pytest.mark.usefixtures("tables")
def test_add_source_refuses(
    conn: Connection, table: str, args: dict[str, Any], error: type[Exception], phrase: str
) -> None:
    texts = args.get("texts", ["content"] if table in ("chunks", "documents") else ["body"])
    with pytest.raises(error, match=phrase) as err:
        conn.execute(
            "SELECT add_source(%s, %s, %s, %s, %s)",
            (table, args.get("key"), texts, args.get("metadata", []), args.get("json")),
        )
    assert "\n" not in str(err.value).split("CONTEXT:")[0].strip()
    assert conn.execute("SELECT count(*) AS n FROM sources").fetchone() == {"n": 1}


@pytest.mark.usefixtures("tables")
def test_the_same_table_twice_is_refused_under_any_name(conn: Connection) -> None:
    add_source(conn, "good", None, ["body"], name="first")
    for spelling in ("good", "public.good", '"public"."good"'):
        with pytest.raises(psycopg.errors.DuplicateObject, match="already a source"):
            add_source(conn, spelling, None, ["body"], name="second")
    with pytest.raises(psycopg.errors.DuplicateObject, match="a source named first"):
        add_source(conn, "other", None, ["body"], name="first")
    assert conn.execute("SELECT count(*) AS n FROM sources").fetchone() == {"n": 2}


# --- the migration --------------------------------------------------------------------


def test_downgrade_and_upgrade_with_a_registered_source(database: str) -> None:
    with connect(database, "public", autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
        source = add_source(conn, "notes", None, ["body"])
        conn.execute("INSERT INTO notes SELECT i, 'x' FROM generate_series(1, 10) AS i")
        add_chunks(conn, source, "1", 2)
        conn.execute("INSERT INTO chunks (content) VALUES ('a row of its own')")
    migrate.downgrade(database, "public", "0004")
    with connect(database, "public", autocommit=True) as conn:
        assert triggers(conn, "notes") == set()
        for name in ("sources", "source_documents", "documents"):
            assert conn.execute("SELECT to_regclass(%s) AS r", (name,)).fetchone() == {"r": None}
        assert conn.execute("SELECT count(*) AS n FROM notes").fetchone() == {"n": 10}
        assert conn.execute("SELECT content FROM chunks").fetchall() == [
            {"content": "a row of its own"}
        ]
        conn.execute("INSERT INTO notes VALUES (11, 'y')")
        conn.execute("UPDATE notes SET body = 'z'")
        conn.execute("DELETE FROM notes WHERE id = 1")
    migrate.upgrade(database, "public")
    with connect(database, "public", autocommit=True) as conn:
        migrate.check_schema(conn, "public")
        assert conn.execute("SELECT name FROM sources").fetchall() == [{"name": "documents"}]
        assert triggers(conn, "documents") == FOUR_TRIGGERS
        source = add_source(conn, "notes", None, ["body"])
        assert backfill(conn, source, 100) == 10
        assert set(documents(conn, source)) == keys_of(conn, "notes", "id")


# --- cost of the triggers (printed, not asserted) ---------------------------------------


@pytest.mark.slow
def test_print_the_cost_of_the_triggers(conn: Connection) -> None:
    rows = 50_000
    for table in ("plain", "watched"):
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, body text, n integer)").format(
                sql.Identifier(table)
            )
        )
    source = add_source(conn, "watched", None, ["body"])

    def timed(statement: sql.Composed) -> float:
        start = time.perf_counter()
        conn.execute(statement)
        return time.perf_counter() - start

    results: dict[str, dict[str, float]] = {}
    for table in ("plain", "watched"):
        name = sql.Identifier(table)
        inserts, updates = [], []
        for _ in range(3):
            conn.execute(sql.SQL("TRUNCATE {}").format(name))
            conn.execute("VACUUM source_documents")
            inserts.append(
                timed(
                    sql.SQL(
                        "INSERT INTO {} SELECT i, 'a note of a few words, number ' || i, 0"
                        " FROM generate_series(1, {}) AS i"
                    ).format(name, sql.Literal(rows))
                )
            )
            updates.append(timed(sql.SQL("UPDATE {} SET n = n + 1").format(name)))
        results[table] = {
            "insert": statistics.median(inserts),
            "update": statistics.median(updates),
        }
    for kind in ("insert", "update"):
        plain, watched = results["plain"][kind], results["watched"][kind]
        print(
            f"\n{rows} rows, {kind}: {plain:.3f} s without triggers, {watched:.3f} s with,"
            f" ratio {watched / plain:.2f} (medians of 3)"
        )
    assert len(documents(conn, source)) == rows
