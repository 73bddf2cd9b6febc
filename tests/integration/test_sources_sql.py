"""Migration 0005 in SQL: the triggers of a source table, source_texts, the
application's role, NOTIFY.  Real PostgreSQL, real tables, no daemon.

The daemon is simulated where a test needs indexed documents: it sets a document's
state by hand and inserts chunks rows with ``document_id`` set.  The helpers here are
shared by the other ``test_sources_*`` modules.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexer.db.connect import Connection, connect

TICKETS = '"My App"."Support Tickets"'


def add_source(
    conn: Connection,
    table: str,
    key: str | None,
    texts: list[str],
    metadata: list[str] | None = None,
    metadata_json: str | None = None,
    name: str | None = None,
) -> int:
    row = conn.execute(
        "SELECT id FROM add_source(%s, %s, %s, %s, %s, %s)",
        (table, key, texts, metadata or [], metadata_json, name),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def apply_changes(conn: Connection) -> int:
    """What a daemon does before it claims documents: apply the changes the triggers
    appended (migration 0008).  How many it took."""
    row = conn.execute("SELECT apply_source_changes() AS n").fetchone()
    assert row is not None
    return int(row["n"])


def documents(conn: Connection, source: int) -> dict[str, dict[str, Any]]:
    """The source's documents by key, once the triggers' changes are applied."""
    apply_changes(conn)
    rows = conn.execute(
        "SELECT * FROM source_documents WHERE source_id = %s ORDER BY id", (source,)
    ).fetchall()
    return {r["doc_key"]: dict(r) for r in rows}


def keys_of(conn: Connection, table: str, key: str) -> set[str]:
    query = sql.SQL("SELECT {}::text AS k FROM {}").format(sql.Identifier(key), sql.SQL(table))
    return {r["k"] for r in conn.execute(query).fetchall()}


def add_chunks(conn: Connection, source: int, key: str, n: int) -> None:
    """What the daemon would write for an indexed document: n chunks rows."""
    apply_changes(conn)
    conn.execute(
        "INSERT INTO chunks (content, document_id, source_id, doc_key, position,"
        " char_start, char_end)"
        " SELECT 'passage ' || p, d.id, d.source_id, d.doc_key, p, p * 10, p * 10 + 9"
        " FROM source_documents d, generate_series(0, %s - 1) AS p"
        " WHERE d.source_id = %s AND d.doc_key = %s",
        (n, source, key),
    )
    conn.execute(
        "UPDATE source_documents SET state = 'indexed', chunk_count = %s, indexed_at = now()"
        " WHERE source_id = %s AND doc_key = %s",
        (n, source, key),
    )


def chunk_keys(conn: Connection, source: int) -> list[str]:
    rows = conn.execute(
        "SELECT doc_key FROM chunks WHERE source_id = %s ORDER BY doc_key, position", (source,)
    ).fetchall()
    return [r["doc_key"] for r in rows]


@pytest.fixture
def tickets(conn: Connection) -> int:
    """A source in a schema and a table whose names need quotes, a uuid key."""
    conn.execute('CREATE SCHEMA "My App"')
    conn.execute(
        'CREATE TABLE "My App"."Support Tickets" ('
        ' "Ticket Id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),'
        ' "Title" text, body text, priority integer, tags jsonb, seen integer DEFAULT 0)'
    )
    return add_source(conn, TICKETS, None, ["Title", "body"], ["priority"], "tags")


def insert_ticket(conn: Connection, title: str, body: str = "", priority: int = 1) -> str:
    row = conn.execute(
        'INSERT INTO "My App"."Support Tickets" ("Title", body, priority)'
        ' VALUES (%s, %s, %s) RETURNING "Ticket Id"::text AS k',
        (title, body, priority),
    ).fetchone()
    assert row is not None
    return str(row["k"])


# --- keys and names ---------------------------------------------------------------

KEY_TYPES = {
    "bigint": ("bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", None),
    "uuid": ("uuid PRIMARY KEY DEFAULT gen_random_uuid()", None),
    "text": ("text PRIMARY KEY", ["doc-b", "doc-a", "Doc C"]),
    "character varying": ("varchar(40) NOT NULL UNIQUE", ["v1", "v2", "v3"]),
}


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
def test_a_multi_row_insert_queues_one_pending_document_per_row(
    conn: Connection, key_type: str
) -> None:
    column, values = KEY_TYPES[key_type]
    conn.execute(sql.SQL("CREATE TABLE notes (k {}, body text)").format(sql.SQL(column)))
    source = add_source(conn, "notes", "k", ["body"])
    assert conn.execute("SELECT key_type FROM sources WHERE id = %s", (source,)).fetchone() == {
        "key_type": key_type
    }
    if values is None:
        conn.execute("INSERT INTO notes (body) VALUES ('one'), ('two'), ('three')")
    else:
        conn.execute(
            "INSERT INTO notes (k, body) VALUES (%s, 'one'), (%s, 'two'), (%s, 'three')",
            values,
        )
    docs = documents(conn, source)
    assert set(docs) == keys_of(conn, "notes", "k")
    assert len(docs) == 3
    assert {(d["state"], d["version"], d["attempts"]) for d in docs.values()} == {("pending", 1, 0)}


def test_a_source_whose_schema_table_and_columns_need_quotes(
    conn: Connection, tickets: int
) -> None:
    row = conn.execute("SELECT * FROM sources WHERE id = %s", (tickets,)).fetchone()
    assert row is not None
    assert (row["name"], row["table_schema"], row["table_name"], row["key_column"]) == (
        TICKETS,
        "My App",
        "Support Tickets",
        "Ticket Id",
    )
    first = insert_ticket(conn, "Printer on fire", "Third floor.")
    second = insert_ticket(conn, "VPN down")
    assert set(documents(conn, tickets)) == {first, second}
    conn.execute('UPDATE "My App"."Support Tickets" SET "Title" = \'VPN up\'')
    assert {d["version"] for d in documents(conn, tickets).values()} == {2}
    conn.execute('DELETE FROM "My App"."Support Tickets" WHERE "Ticket Id" = %s', (first,))
    assert set(documents(conn, tickets)) == {second}
    texts = conn.execute(
        "SELECT * FROM source_texts(%s, %s, 1000)", (tickets, [first, second])
    ).fetchall()
    assert texts == [{"doc_key": second, "content": "VPN up", "metadata": {"priority": 1}}]


# --- UPDATE ---------------------------------------------------------------------


def _claim(conn: Connection, source: int, key: str) -> None:
    """What a daemon's claim leaves on a document."""
    apply_changes(conn)
    conn.execute(
        "UPDATE source_documents SET state = 'claimed', claimed_by = %s, attempts = 2,"
        " lease_expires_at = now() + interval '1 minute', last_error = 'earlier failure',"
        " retry_at = now() WHERE source_id = %s AND doc_key = %s",
        (uuid.uuid4(), source, key),
    )


def test_an_update_of_a_text_column_requeues_the_document(conn: Connection, tickets: int) -> None:
    key = insert_ticket(conn, "Printer on fire", "Third floor.")
    other = insert_ticket(conn, "VPN down")
    _claim(conn, tickets, key)
    conn.execute(
        'UPDATE "My App"."Support Tickets" SET body = \'Fourth floor.\' WHERE "Ticket Id" = %s',
        (key,),
    )
    docs = documents(conn, tickets)
    doc = docs[key]
    assert (doc["state"], doc["version"], doc["attempts"]) == ("pending", 2, 0)
    assert doc["claimed_by"] is None and doc["lease_expires_at"] is None
    assert doc["last_error"] is None and doc["retry_at"] is None
    assert docs[other]["version"] == 1


def test_an_update_of_other_columns_queues_nothing(conn: Connection, tickets: int) -> None:
    key = insert_ticket(conn, "Printer on fire", "Third floor.")
    add_chunks(conn, tickets, key, 2)
    before = documents(conn, tickets)
    conn.execute('UPDATE "My App"."Support Tickets" SET seen = seen + 1')
    # The same value written again is no change either.
    conn.execute('UPDATE "My App"."Support Tickets" SET "Title" = "Title", body = body')
    assert documents(conn, tickets) == before
    assert before[key]["state"] == "indexed"


@pytest.mark.parametrize(
    "assignment",
    ["priority = 2", 'tags = \'{"team": "ops"}\'', "priority = NULL"],
    ids=["metadata column", "metadata_json column", "metadata column to NULL"],
)
def test_an_update_of_a_metadata_column_requeues(
    conn: Connection, tickets: int, assignment: str
) -> None:
    key = insert_ticket(conn, "Printer on fire")
    add_chunks(conn, tickets, key, 1)
    conn.execute(sql.SQL('UPDATE "My App"."Support Tickets" SET {}').format(sql.SQL(assignment)))
    doc = documents(conn, tickets)[key]
    assert (doc["state"], doc["version"]) == ("pending", 2)


@pytest.fixture
def notes(conn: Connection) -> int:
    """bigint keys given by the test; a deferrable key, so that keys can be swapped."""
    conn.execute(
        "CREATE TABLE notes (id bigint PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE,"
        " body text, n integer DEFAULT 0)"
    )
    return add_source(conn, "notes", None, ["body"])


def test_an_update_of_the_key_is_a_delete_and_an_insert(conn: Connection, notes: int) -> None:
    conn.execute("INSERT INTO notes (id, body) VALUES (1, 'one'), (2, 'two')")
    add_chunks(conn, notes, "1", 3)
    add_chunks(conn, notes, "2", 1)
    conn.execute("UPDATE notes SET id = 10 WHERE id = 1")
    docs = documents(conn, notes)
    assert set(docs) == {"2", "10"}
    assert (docs["10"]["state"], docs["10"]["version"]) == ("pending", 1)
    assert docs["2"]["state"] == "indexed"
    assert chunk_keys(conn, notes) == ["2"]


def test_a_key_swap_in_one_statement_requeues_both(conn: Connection, notes: int) -> None:
    conn.execute("INSERT INTO notes (id, body) VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    for key in ("1", "2", "3"):
        add_chunks(conn, notes, key, 1)
    with conn.transaction():
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute("UPDATE notes SET id = 3 - id WHERE id IN (1, 2)")
    assert {r["id"]: r["body"] for r in conn.execute("SELECT * FROM notes").fetchall()} == {
        1: "two",
        2: "one",
        3: "three",
    }
    docs = documents(conn, notes)
    assert set(docs) == {"1", "2", "3"}
    assert {k: (d["state"], d["version"]) for k, d in docs.items()} == {
        "1": ("pending", 2),
        "2": ("pending", 2),
        "3": ("indexed", 1),
    }


def test_a_shift_of_every_key_in_one_statement(conn: Connection, notes: int) -> None:
    conn.execute("INSERT INTO notes (id, body) VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    apply_changes(conn)
    with conn.transaction():
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute("UPDATE notes SET id = id + 1")
    docs = documents(conn, notes)
    assert set(docs) == {"2", "3", "4"}  # 1 deleted; 2 and 3 have new text; 4 is new
    assert {k: d["version"] for k, d in docs.items()} == {"2": 2, "3": 2, "4": 1}


# --- DELETE and TRUNCATE ----------------------------------------------------------


def test_a_delete_removes_the_document_and_its_chunks_in_the_same_transaction(
    conn: Connection, notes: int, database: str
) -> None:
    conn.execute("INSERT INTO notes (id, body) VALUES (1, 'one'), (2, 'two')")
    add_chunks(conn, notes, "1", 3)
    add_chunks(conn, notes, "2", 2)
    conn.execute("INSERT INTO chunks (content) VALUES ('a row of its own')")
    with connect(database, "public", autocommit=False) as writer:
        writer.execute("DELETE FROM notes WHERE id = 1")
        assert set(documents(writer, notes)) == {"2"}
        assert chunk_keys(writer, notes) == ["2", "2"]
        # Not committed: everyone else still sees the document.
        assert set(documents(conn, notes)) == {"1", "2"}
        writer.rollback()
        assert chunk_keys(writer, notes) == ["1", "1", "1", "2", "2"]
        writer.execute("DELETE FROM notes")
        writer.commit()
    assert documents(conn, notes) == {}
    assert chunk_keys(conn, notes) == []
    assert conn.execute("SELECT count(*) AS n FROM chunks").fetchone() == {"n": 1}


def test_truncate_removes_the_sources_documents_only(
    conn: Connection, notes: int, tickets: int
) -> None:
    conn.execute("INSERT INTO notes (id, body) VALUES (1, 'one'), (2, 'two')")
    add_chunks(conn, notes, "1", 2)
    key = insert_ticket(conn, "VPN down")
    add_chunks(conn, tickets, key, 2)
    conn.execute("TRUNCATE notes")
    assert documents(conn, notes) == {}
    assert chunk_keys(conn, notes) == []
    assert set(documents(conn, tickets)) == {key}
    assert chunk_keys(conn, tickets) == [key, key]
    conn.execute("INSERT INTO notes (id, body) VALUES (1, 'again')")
    assert documents(conn, notes)["1"]["version"] == 1


# --- source_texts -----------------------------------------------------------------


def test_source_texts_joins_cuts_and_builds_metadata(conn: Connection) -> None:
    conn.execute(
        "CREATE TABLE pages (id integer PRIMARY KEY, title text, summary varchar(200),"
        " body text, views integer, ratio double precision, lang text, extra jsonb)"
    )
    source = add_source(
        conn, "pages", None, ["title", "summary", "body"], ["views", "ratio", "lang"], "extra"
    )
    conn.execute(
        "INSERT INTO pages VALUES"
        " (1, 'Title', 'Summary', 'Body', 5, 0.5, 'en', '{\"team\": \"ops\", \"tags\": [1]}'),"
        " (2, NULL, '', 'Only the body', NULL, NULL, NULL, '[1, 2]'),"
        " (3, 'Title', NULL, 'Body', 7, 1, 'fr', NULL),"
        " (4, NULL, NULL, NULL, 0, 0, 'de', '\"a string\"'),"
        " (5, '', '', '', 1, 2, 'it', '{}')"
    )
    rows = conn.execute(
        "SELECT * FROM source_texts(%s, %s, 1000)", (source, ["1", "2", "3", "4", "5", "99"])
    ).fetchall()
    got = {r["doc_key"]: (r["content"], r["metadata"]) for r in rows}
    assert got == {
        "1": (
            "Title\n\nSummary\n\nBody",
            {"views": 5, "ratio": 0.5, "lang": "en", "team": "ops", "tags": [1]},
        ),
        "2": ("Only the body", {"views": None, "ratio": None, "lang": None}),
        "3": ("Title\n\nBody", {"views": 7, "ratio": 1, "lang": "fr"}),
        "4": ("", {"views": 0, "ratio": 0, "lang": "de"}),
        "5": ("", {"views": 1, "ratio": 2, "lang": "it"}),
    }
    assert isinstance(got["1"][1]["views"], int)

    cut = conn.execute("SELECT * FROM source_texts(%s, %s, 9)", (source, ["1"])).fetchone()
    assert cut is not None
    assert cut["content"] == "Title\n\nSu" and len(cut["content"]) == 9

    conn.execute("DELETE FROM pages WHERE id = 3")
    left = conn.execute("SELECT doc_key FROM source_texts(%s, %s, 10)", (source, ["3", "1"]))
    assert [r["doc_key"] for r in left.fetchall()] == ["1"]
    assert conn.execute("SELECT * FROM source_texts(12345, ARRAY['1'], 10)").fetchall() == []


def test_source_texts_counts_characters_not_bytes(conn: Connection) -> None:
    conn.execute("CREATE TABLE pages (id text PRIMARY KEY, body text)")
    source = add_source(conn, "pages", None, ["body"])
    conn.execute("INSERT INTO pages VALUES ('é', 'ééééé€€€€€')")
    row = conn.execute("SELECT * FROM source_texts(%s, ARRAY['é'], 7)", (source,)).fetchone()
    assert row == {"doc_key": "é", "content": "ééééé€€", "metadata": {}}


# --- the application's role ---------------------------------------------------------


@pytest.fixture
def app_writer(conn: Connection, database: str, tickets: int) -> Iterator[str]:
    """A LOGIN role with rights on the user's table only; the DSN that connects as it."""
    role = "app_writer_" + uuid.uuid4().hex[:8]  # roles are the server's, not the database's
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL('GRANT USAGE ON SCHEMA "My App" TO {}').format(sql.Identifier(role)))
    conn.execute(
        sql.SQL('GRANT SELECT, INSERT, UPDATE, DELETE ON "My App"."Support Tickets" TO {}').format(
            sql.Identifier(role)
        )
    )
    info = psycopg.conninfo.conninfo_to_dict(database)
    info["user"] = role
    yield psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_applications_role_needs_no_right_on_the_indexers_tables(
    conn: Connection, tickets: int, app_writer: str
) -> None:
    with psycopg.connect(app_writer, autocommit=True) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT 1 FROM source_documents")
        app.execute('INSERT INTO "My App"."Support Tickets" ("Title") VALUES (\'a\'), (\'b\')')
        apply_changes(conn)  # a daemon applies them: the update queues the document again
        app.execute('UPDATE "My App"."Support Tickets" SET "Title" = \'c\' WHERE "Title" = \'a\'')
        app.execute('DELETE FROM "My App"."Support Tickets" WHERE "Title" = \'b\'')
    docs = documents(conn, tickets)
    assert set(docs) == keys_of(conn, TICKETS, "Ticket Id")
    assert [d["version"] for d in docs.values()] == [2]


def test_a_hostile_search_path_does_not_redirect_the_trigger(
    conn: Connection, tickets: int, app_writer: str
) -> None:
    role = psycopg.conninfo.conninfo_to_dict(app_writer)["user"]
    conn.execute("CREATE SCHEMA evil")
    for table in ("sources", "source_documents"):
        conn.execute(
            sql.SQL("CREATE TABLE evil.{0} (LIKE public.{0} INCLUDING ALL)").format(
                sql.Identifier(table)
            )
        )
    conn.execute("INSERT INTO evil.sources OVERRIDING SYSTEM VALUE SELECT * FROM public.sources")
    conn.execute(sql.SQL("GRANT ALL ON SCHEMA evil TO {}").format(sql.Identifier(str(role))))
    conn.execute(
        sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA evil TO {}").format(sql.Identifier(str(role)))
    )
    with psycopg.connect(app_writer, autocommit=True) as app:
        app.execute("SET search_path = evil, public")
        app.execute("CREATE TEMP TABLE source_documents (LIKE evil.source_documents)")
        app.execute('INSERT INTO "My App"."Support Tickets" ("Title") VALUES (\'a\')')
        assert app.execute("SELECT count(*) FROM evil.source_documents").fetchone() == (0,)
        assert app.execute("SELECT count(*) FROM pg_temp.source_documents").fetchone() == (0,)
    assert set(documents(conn, tickets)) == keys_of(conn, TICKETS, "Ticket Id")
    assert len(documents(conn, tickets)) == 1


# --- NOTIFY -------------------------------------------------------------------------


def _notifications(listener: psycopg.Connection[Any], writer: Connection) -> list[str]:
    """Payloads received on indexer_chunks up to a marker the writer sends last."""
    writer.execute("SELECT pg_notify('indexer_chunks', 'marker')")
    payloads: list[str] = []
    for note in listener.notifies(timeout=30):
        if note.payload == "marker":
            return payloads
        payloads.append(note.payload)
    raise AssertionError("the marker notification never came")


def test_a_committed_insert_notifies_and_an_update_of_other_columns_does_not(
    conn: Connection, database: str, notes: int
) -> None:
    with psycopg.connect(database, autocommit=True) as listener:
        listener.execute("LISTEN indexer_chunks")
        conn.execute("INSERT INTO notes (id, body) VALUES (1, 'one'), (2, 'two')")
        assert _notifications(listener, conn) == ["public"]
        conn.execute("UPDATE notes SET n = n + 1")
        assert _notifications(listener, conn) == []
        conn.execute("UPDATE notes SET body = 'ONE' WHERE id = 1")
        assert _notifications(listener, conn) == ["public"]
        with connect(database, "public", autocommit=False) as writer:
            writer.execute("INSERT INTO notes (id, body) VALUES (3, 'three')")
            writer.rollback()
        assert _notifications(listener, conn) == []
