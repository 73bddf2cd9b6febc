"""The application's own DDL on a source table: renames are followed, the application's
writes never fail because of the indexer, and what cannot be followed is said."""

from __future__ import annotations

import psycopg
import pytest

from indexer.db import migrate
from indexer.db.connect import Connection

from .test_sources_sql import apply_changes

DIM = 384


def documents(conn: Connection, source: str = "public.notes") -> dict[str, int]:
    """The source's documents and their versions, once the triggers' changes are
    applied (as a daemon does)."""
    apply_changes(conn)
    rows = conn.execute(
        "SELECT d.doc_key, d.version FROM source_documents d JOIN sources s"
        " ON s.id = d.source_id WHERE s.name = %s",
        (source,),
    ).fetchall()
    return {r["doc_key"]: r["version"] for r in rows}


def texts(conn: Connection, keys: list[str], source: str = "public.notes") -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT t.doc_key, t.content FROM sources s, source_texts(s.id, %s, 1000) t"
        " WHERE s.name = %s ORDER BY 1",
        (keys, source),
    ).fetchall()
    return [(r["doc_key"], r["content"]) for r in rows]


@pytest.fixture
def notes(conn: Connection) -> None:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, title text, body text, lang text)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['title', 'body'], ARRAY['lang'])")
    conn.execute("INSERT INTO notes VALUES (1, 'one', 'first', 'en')")
    apply_changes(conn)


@pytest.mark.usefixtures("notes")
def test_renamed_columns_are_followed_and_writes_go_on(conn: Connection) -> None:
    conn.execute("ALTER TABLE notes RENAME COLUMN id TO note_id")
    conn.execute("ALTER TABLE notes RENAME COLUMN body TO text_body")
    conn.execute("ALTER TABLE notes RENAME COLUMN lang TO language")
    conn.execute("INSERT INTO notes VALUES (2, 'two', 'second', 'de')")
    conn.execute("UPDATE notes SET text_body = 'changed' WHERE note_id = 1")
    conn.execute("UPDATE notes SET language = 'fr' WHERE note_id = 2")
    assert documents(conn) == {"1": 2, "2": 1}  # 2's insert and update applied at once
    conn.execute("DELETE FROM notes WHERE note_id = 2")
    assert documents(conn) == {"1": 2}
    assert texts(conn, ["1"]) == [("1", "one\n\nchanged")]


@pytest.mark.usefixtures("notes")
def test_a_dropped_text_column_leaves_the_others(conn: Connection) -> None:
    conn.execute("ALTER TABLE notes DROP COLUMN title")
    conn.execute("UPDATE notes SET body = 'edited' WHERE id = 1")
    assert documents(conn) == {"1": 2}
    conn.execute("ALTER TABLE notes DROP COLUMN lang")
    conn.execute("UPDATE notes SET body = 'edited again' WHERE id = 1")
    assert documents(conn) == {"1": 3}  # inserted, then each update seen
    assert texts(conn, ["1"]) == [("1", "edited again")]


@pytest.mark.usefixtures("notes")
def test_a_renamed_table_is_followed_removed_and_added_again(conn: Connection) -> None:
    conn.execute("ALTER TABLE notes RENAME TO notebook")
    conn.execute("INSERT INTO notebook VALUES (2, 'two', 'second', 'de')")
    assert documents(conn) == {"1": 1, "2": 1}
    assert texts(conn, ["2"]) == [("2", "two\n\nsecond")]
    conn.execute("ALTER TABLE notebook ALTER COLUMN id TYPE text")
    conn.execute("INSERT INTO notebook VALUES ('x', 'ex', 'text key', 'en')")
    assert texts(conn, ["x"]) == [("x", "ex\n\ntext key")]
    conn.execute("SELECT remove_source('public.notes')")
    left = conn.execute("SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = 'notebook'::regclass")
    assert left.fetchone() == {"n": 0}
    conn.execute("SELECT add_source('notebook', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO notebook VALUES ('y', 'why', 'again', 'en')")
    assert documents(conn, "public.notebook") == {"y": 1}


def test_a_partitioned_table_is_refused_in_one_line(conn: Connection) -> None:
    conn.execute("CREATE TABLE parts (id bigint PRIMARY KEY, body text) PARTITION BY RANGE (id)")
    with pytest.raises(psycopg.errors.WrongObjectType) as refused:
        conn.execute("SELECT add_source('parts', NULL, ARRAY['body'])")
    assert str(refused.value).splitlines()[0] == (
        "public.parts is a partitioned table: statements on its partitions would not reach the"
        " indexer's triggers on it; partitioned tables cannot be sources"
    )
    conn.execute("CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (10)")
    with pytest.raises(psycopg.errors.WrongObjectType) as refused:
        conn.execute("SELECT add_source('parts_1', NULL, ARRAY['body'])")
    assert str(refused.value).splitlines()[0] == (
        "public.parts_1 is a partition: statements on its partitioned table would not reach"
        " the indexer's triggers on it; partitions and partitioned tables cannot be sources"
    )


def test_a_key_whose_unique_index_is_deferrable_is_refused_in_one_line(conn: Connection) -> None:
    """Two rows may share an INITIALLY DEFERRED key until commit: their changes would come
    out of order (a row inserted while its old self is deleted lost its document).  A
    DEFERRABLE INITIALLY IMMEDIATE key (checked at the end of each statement, before
    the statement's trigger) is accepted: see test_sources_sql's ``notes``."""
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, body text)")
    with pytest.raises(psycopg.errors.InvalidTableDefinition) as refused:
        conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
    assert str(refused.value).splitlines()[0] == (
        "key column id of public.notes is not unique and NOT NULL (no primary key or unique"
        " index on it alone, not INITIALLY DEFERRED)"
    )


@pytest.mark.parametrize("key_type", ["timestamptz", "numeric", "bytea", "date"])
def test_a_key_whose_text_depends_on_settings_is_refused(conn: Connection, key_type: str) -> None:
    conn.execute(f"CREATE TABLE keyed (k {key_type} PRIMARY KEY, body text)")
    with pytest.raises(psycopg.errors.DatatypeMismatch, match="a key must be smallint, integer"):
        conn.execute("SELECT add_source('keyed', NULL, ARRAY['body'])")


@pytest.mark.usefixtures("notes")
def test_a_dropped_tables_passages_are_not_found(conn: Connection) -> None:
    vector = "[" + ",".join(["1"] + ["0"] * (DIM - 1)) + "]"
    conn.execute(
        "INSERT INTO chunks (content, embedding, document_id, source_id, doc_key, position,"
        " char_start, char_end) SELECT 'one', %s, d.id, d.source_id, d.doc_key, 0, 0, 3"
        " FROM source_documents d",
        (vector,),
    )
    query = "SELECT count(*) AS n FROM search_documents(%s::vector, 5)"
    assert conn.execute(query, (vector,)).fetchone() == {"n": 1}
    conn.execute("DROP TABLE notes")
    assert conn.execute(query, (vector,)).fetchone() == {"n": 0}
    status = conn.execute(
        "SELECT source_table, table_present FROM indexer_source_status WHERE source = %s",
        ("public.notes",),
    ).fetchone()
    assert status == {"source_table": "public.notes", "table_present": False}


def test_writes_go_on_when_every_watched_column_is_dropped(conn: Connection) -> None:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text, n int)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO notes VALUES (1, 'one', 0)")
    conn.execute("ALTER TABLE notes DROP COLUMN body")
    conn.execute("UPDATE notes SET n = 1")
    conn.execute("UPDATE notes SET id = 2")  # a key change: the old key gone, the new queued
    conn.execute("TRUNCATE notes")
    assert documents(conn) == {}


def test_a_source_of_another_indexer_schema_is_refused_in_one_line(
    conn: Connection, database: str
) -> None:
    """The triggers' names are the same in every indexer schema: registering the table
    in a second one would replace the first one's triggers, and silence its source."""
    conn.execute("CREATE TABLE shared (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT add_source('shared', NULL, ARRAY['body'])")
    migrate.upgrade(database, "b")
    with pytest.raises(psycopg.errors.DuplicateObject) as refused:
        conn.execute("SELECT b.add_source('public.shared', NULL, ARRAY['body'])")
    assert str(refused.value).splitlines()[0] == (
        "public.shared is already a source of the indexer in schema public: its triggers would"
        " be replaced, and that source would miss every change"
    )
    conn.execute("INSERT INTO shared VALUES (1, 'one')")
    assert documents(conn, "public.shared") == {"1": 1}
