"""Failed documents re-queued: retry_documents() in SQL (migration 0007), the Python
API, and who may run it (grant_write's roles, not grant_search's)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from indexer import Indexer, Settings
from indexer.db import migrate
from indexer.db.connect import Connection
from indexer.exceptions import InsufficientPrivilege, SourceError
from tests.integration.test_sources_sql import apply_changes


@contextlib.contextmanager
def role(conn: Connection, database: str) -> Iterator[tuple[str, str]]:
    """A LOGIN role (roles are the server's: a fresh name each time) and its DSN."""
    name = "r_" + uuid.uuid4().hex[:12]
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield name, make_conninfo(database, user=name)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def fail(conn: Connection, source: str, *keys: str) -> None:
    """Park these documents of ``source`` as failed, as the daemon would."""
    apply_changes(conn)
    conn.execute(
        "UPDATE source_documents SET state = 'failed', attempts = 5, last_error = 'boom',"
        " retry_at = NULL WHERE doc_key = ANY(%s)"
        " AND source_id = (SELECT id FROM sources WHERE name = %s)",
        (list(keys), source),
    )


def states(conn: Connection) -> dict[tuple[str, str], tuple[str, int, str | None]]:
    rows = conn.execute(
        "SELECT s.name, d.doc_key, d.state, d.attempts, d.last_error FROM source_documents d"
        " JOIN sources s ON s.id = d.source_id"
    ).fetchall()
    return {(r["name"], r["doc_key"]): (r["state"], r["attempts"], r["last_error"]) for r in rows}


@pytest.fixture
def failed(conn: Connection) -> Connection:
    """Two failed documents of public.notes, one of documents, one indexed."""
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    conn.execute("INSERT INTO documents (id, content) VALUES (7, 'seven')")
    fail(conn, "public.notes", "1", "2")
    fail(conn, "documents", "7")
    conn.execute("UPDATE source_documents SET state = 'indexed' WHERE doc_key = '3'")
    return conn


def test_retry_documents_requeues_one_sources_or_every_failed_document(
    failed: Connection,
) -> None:
    conn = failed
    with pytest.raises(psycopg.errors.UndefinedObject, match="no source named nope"):
        conn.execute("SELECT * FROM retry_documents('nope')")
    rows = conn.execute("SELECT * FROM retry_documents('public.notes')").fetchall()
    assert rows == [{"source": "public.notes", "requeued": 2}]
    assert states(conn) == {
        ("public.notes", "1"): ("pending", 0, None),
        ("public.notes", "2"): ("pending", 0, None),
        ("public.notes", "3"): ("indexed", 0, None),
        ("documents", "7"): ("failed", 5, "boom"),
    }
    assert conn.execute("SELECT * FROM retry_documents()").fetchall() == [
        {"source": "documents", "requeued": 1}
    ]
    assert conn.execute("SELECT * FROM retry_documents()").fetchall() == []


def test_the_python_api_lists_and_requeues_failed_documents(
    failed: Connection, settings: Settings
) -> None:
    with Indexer(settings) as ix:
        listed = ix.failed_documents()
        assert [(d["source"], d["key"], d["attempts"], d["last_error"]) for d in listed] == [
            ("documents", "7", 5, "boom"),
            ("public.notes", "1", 5, "boom"),
            ("public.notes", "2", 5, "boom"),
        ]
        assert ix.status()["documents_failed"] == 3
        with pytest.raises(SourceError, match="no source named nope"):
            ix.retry_failed_documents("nope")
        assert ix.retry_failed_documents("documents") == {"documents": 1}
        assert ix.retry_failed_documents() == {"public.notes": 2}
        assert ix.retry_failed() == []  # rows: as before, none failed
        assert ix.failed_documents() == []


def test_a_writing_role_may_requeue_documents_and_a_searching_role_is_told_what_to_ask(
    failed: Connection, database: str
) -> None:
    conn = failed
    with role(conn, database) as (writer, dsn):
        conn.execute("SELECT grant_write(%s)", (writer,))
        with psycopg.connect(dsn, autocommit=True) as as_writer:
            rows = as_writer.execute("SELECT * FROM public.retry_documents()").fetchall()
        assert rows == [("documents", 1), ("public.notes", 2)]
    fail(conn, "documents", "7")
    with role(conn, database) as (reader, dsn):
        conn.execute("SELECT grant_search(%s)", (reader,))
        with (
            psycopg.connect(dsn, autocommit=True) as as_reader,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            as_reader.execute("SELECT * FROM public.retry_documents()")
        with (
            Indexer(Settings(database_url=dsn)) as ix,
            pytest.raises(InsufficientPrivilege) as caught,
        ):
            ix.retry_failed_documents()
        assert str(caught.value) == (
            f"role {reader} may not re-queue failed documents (permission denied for "
            f"function retry_documents): ask the owner of the indexer's tables (role "
            f"{conn.info.user}) to run SELECT public.grant_write('{reader}');"
        )
    assert states(conn)[("documents", "7")][0] == "failed"


def test_roles_that_could_write_before_the_upgrade_may_requeue_documents(
    conn: Connection, database: str
) -> None:
    migrate.downgrade(database, "public", "0006")
    with role(conn, database) as (writer, dsn):
        conn.execute("SELECT grant_write(%s)", (writer,))
        migrate.upgrade(database, "public")
        with psycopg.connect(dsn, autocommit=True) as as_writer:
            assert as_writer.execute("SELECT * FROM public.retry_documents()").fetchall() == []
