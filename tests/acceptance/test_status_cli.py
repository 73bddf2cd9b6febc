"""`indexer status`, `retry` and `search` as the user meets them with rows and documents
side by side: rows and passages counted apart, failed documents shown with their error
and re-queued, and an empty search saying why it is empty."""

from __future__ import annotations

import json
from pathlib import Path

from indexer.db.connect import Connection

from ..helpers import cli_env, run_cli


def passages(conn: Connection) -> int:
    row = conn.execute("SELECT count(*) AS n FROM chunks WHERE document_id IS NOT NULL").fetchone()
    assert row is not None
    return int(row["n"])


def test_status_counts_rows_and_passages_apart_and_failed_documents_are_retried(
    database: str, model_cache: Path, conn: Connection
) -> None:
    env = cli_env(database, model_cache, INDEXER_MAX_ATTEMPTS="1", INDEXER_LOG_LEVEL="WARNING")
    conn.execute("INSERT INTO chunks (content) VALUES ('one'), ('two'), ('three'), ('four')")
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, title text, body text)")
    added = run_cli(["sources", "add", "notes", "--text", "title", "--text", "body"], env)
    assert added.returncode == 0, added.stderr
    conn.execute("INSERT INTO notes VALUES (1, 'one', 'the first note'), (2, 'two', 'another')")
    report = "A long report about databases, their tables and their indexes. " * 100
    assert run_cli(["documents", "add", "--text", report], env).returncode == 0
    # The table's key becomes a type of the application's own (a domain): the indexer
    # will not read it, and its documents fail.
    conn.execute("CREATE DOMAIN note_id AS bigint")
    conn.execute("ALTER TABLE notes ALTER COLUMN id TYPE note_id")
    assert run_cli(["run", "--once"], env).returncode == 0

    status = json.loads(run_cli(["status", "--json"], env).stdout)
    assert passages(conn) > 4
    assert (status["embedded"], status["failed"], status["backlog"]) == (4, 0, 0)
    assert status["passages"] == passages(conn)
    assert (status["documents"], status["documents_indexed"], status["documents_failed"]) == (
        3,
        1,
        2,
    )
    error = (
        "cannot read source public.notes: the key column id of public.notes is of a type"
        " that is not built in"
    )
    assert [(d["source"], d["key"], d["last_error"]) for d in status["failed_documents"]] == [
        ("public.notes", "1", error),
        ("public.notes", "2", error),
    ]
    plain = run_cli(["status"], env).stdout
    assert "embedded            4\n" in plain
    assert f"passages            {passages(conn)}\n" in plain
    assert "documents failed    2\n" in plain
    assert f"failed document public.notes 1 after 1 attempts: {error}\n" in plain

    conn.execute("ALTER TABLE notes ALTER COLUMN id TYPE bigint")
    unknown = run_cli(["retry", "--source", "nope"], env)
    assert (unknown.returncode, unknown.stderr) == (1, "indexer: error: no source named nope\n")
    none = run_cli(["retry", "--source", "documents"], env)
    assert none.stdout == "re-queued 0 failed documents\n"
    every = run_cli(["retry", "--failed"], env)
    assert every.returncode == 0, every.stderr
    assert every.stdout == "re-queued 0 failed rows and 2 failed documents (public.notes 2)\n"
    assert run_cli(["run", "--once"], env).returncode == 0
    status = json.loads(run_cli(["status", "--json"], env).stdout)
    assert (status["documents_indexed"], status["documents_failed"]) == (3, 0)
    assert status["failed_documents"] == [] and status["embedded"] == 4


def test_an_empty_search_says_why(database: str, model_cache: Path, conn: Connection) -> None:
    env = cli_env(database, model_cache, INDEXER_LOG_LEVEL="WARNING")

    def rows(*args: str) -> str:
        result = run_cli(["search", "databases", *args], env)
        assert result.returncode == 0 and result.stdout == "", result.stderr
        return result.stderr

    def documents(*args: str) -> str:
        return rows("--documents", *args)

    assert rows() == "no embedded rows yet\n"
    assert documents() == "nothing is indexed yet: no source has a document to index\n"
    conn.execute(
        "INSERT INTO chunks (content, metadata) VALUES ('PostgreSQL', '{\"lang\": \"en\"}')"
    )
    added = run_cli(["documents", "add", "--text", "PostgreSQL is a database."], env)
    assert added.returncode == 0, added.stderr
    assert rows() == "no embedded rows yet: rows are waiting (is `indexer run` running?)\n"
    assert documents() == (
        "nothing is indexed yet: documents are waiting (is `indexer run` running?)\n"
    )
    assert run_cli(["run", "--once"], env).returncode == 0
    assert (
        rows("--filter", '{"lang": "fr"}') == 'no embedded row matches the filter {"lang": "fr"}\n'
    )
    assert documents("--filter", '{"lang": "fr"}') == (
        'no passage matches the filter {"lang": "fr"}\n'
    )
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    assert run_cli(["sources", "add", "notes", "--text", "body"], env).returncode == 0
    assert documents("--source", "public.notes") == (
        "source public.notes has no indexed documents: it has no document to index "
        "(its table is empty)\n"
    )
