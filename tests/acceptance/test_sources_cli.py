"""`indexer sources`, `indexer documents add`, `indexer search --documents` and the
per-source part of `indexer status`: the real command in a subprocess, the real database."""

from __future__ import annotations

import json
from pathlib import Path

from indexer.db.connect import Connection
from indexer.embedding import Embedder

from ..helpers import cli_env, run_cli
from ..integration.test_sources import index_document, make_notes


def test_sources_add_list_remove(database: str, model_cache: Path, conn: Connection) -> None:
    env = cli_env(database, model_cache)
    make_notes(conn, rows=3)
    conn.execute("ANALYZE notes")
    added = run_cli(
        ["sources", "add", "notes", "--text", "title", "--text", "body", "--metadata", "lang"],
        env,
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [
        "added source public.notes: key id (bigint), text title, body; the daemon "
        "back-fills the 3 rows (estimated) already there"
    ]
    listed = run_cli(["sources", "list"], env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "documents: 0 indexed, 0 pending, 0 in flight, 0 failed, 0 truncated; 0 chunks; "
        "lag -; back-fill done",
        "public.notes: 0 indexed, 0 pending, 0 in flight, 0 failed, 0 truncated; 0 chunks; "
        "lag -; back-fill: 0 rows so far",
    ]
    as_json = run_cli(["sources", "list", "--json"], env)
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["source"] for r in rows] == ["documents", "public.notes"]
    assert rows[1]["source_table"] == "public.notes"
    status = run_cli(["status", "--json"], env)
    assert [s["source"] for s in json.loads(status.stdout)["sources"]] == [
        "documents",
        "public.notes",
    ]
    plain = run_cli(["status"], env)
    assert "source              public.notes: 0 indexed" in plain.stdout
    again = run_cli(["sources", "add", "notes", "--text", "body"], env)
    assert again.returncode == 1
    assert again.stderr == "indexer: error: public.notes is already a source\n"
    removed = run_cli(["sources", "remove", "public.notes"], env)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == "removed source public.notes and 0 chunks of its documents\n"
    unknown = run_cli(["sources", "remove", "public.notes"], env)
    assert unknown.stderr == "indexer: error: no source named public.notes\n"


def test_sources_add_refusal_is_one_line(
    database: str, model_cache: Path, conn: Connection
) -> None:
    conn.execute("CREATE TABLE bare (id bigint, body text)")
    result = run_cli(["sources", "add", "bare", "--text", "body"], cli_env(database, model_cache))
    assert result.returncode == 1
    assert result.stderr == (
        "indexer: error: public.bare has no primary key: give a unique, NOT NULL key column"
        " (--id, or key_column in SQL)\n"
    )


def test_documents_add_and_search_documents(
    database: str, model_cache: Path, conn: Connection, embedder: Embedder
) -> None:
    env = cli_env(database, model_cache)
    lines = [
        json.dumps({"text": "A long report about databases.", "metadata": {"lang": "en"}}),
        json.dumps({"text": "Another one."}),
    ]
    added = run_cli(["documents", "add"], env, input="\n".join(lines) + "\n")
    assert added.returncode == 0, added.stderr
    ids = [int(line) for line in added.stdout.splitlines()]
    assert len(ids) == 2
    assert added.stderr.endswith("added 2 documents\n")
    one = run_cli(["documents", "add", "--text", "Plain text.", "--metadata", '{"a": 1}'], env)
    assert one.returncode == 0, one.stderr
    row = conn.execute("SELECT content, metadata FROM documents WHERE id = %s", (int(one.stdout),))
    assert row.fetchone() == {"content": "Plain text.", "metadata": {"a": 1}}
    bad = run_cli(["documents", "add"], env, input='{"text": "kept"}\n{"text": 3}\n')
    assert bad.returncode == 1
    assert (
        bad.stderr.strip()
        == 'indexer: error: line 2: expected an object with a string "text" field'
    )
    assert len(bad.stdout.splitlines()) == 1  # the good line before it was added
    assert conn.execute("SELECT count(*) AS n FROM documents").fetchone() == {"n": 4}

    passage = "PostgreSQL keeps rows in tables and finds them with indexes."
    index_document(conn, embedder, "documents", "900", ["Some preamble here.", passage])
    index_document(conn, embedder, "documents", "901", ["Cats sleep all day."])
    found = run_cli(["search", "--documents", "-k", "2", "rows in tables"], env)
    assert found.returncode == 0, found.stderr
    first, second = found.stdout.splitlines()
    score, source, key, *rest = first.split("  ")
    assert (source, key) == ("documents", "900")
    assert 0 < float(score) <= 1
    assert rest == [passage, f"[20:{20 + len(passage)}]"]
    assert second.split("  ")[2] == "901"
    as_json = run_cli(
        ["search", "--documents", "--json", "--source", "documents", "--passages", "2", "rows"],
        env,
    )
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert records[0]["key"] == "900"
    assert len(records[0]["passages"]) == 2
    assert set(records[0]) >= {"source", "score", "content", "char_start", "char_end"}
    stray = run_cli(["search", "--source", "documents", "rows"], env)
    assert stray.stderr == "indexer: error: --source goes with --documents\n"
    bad_passages = run_cli(["search", "--documents", "--passages", "0", "rows"], env)
    assert bad_passages.stderr == "indexer: error: --passages must be an integer between 1 and 20\n"


#: What no plain-text output may carry raw (but its own line ends): ESC, CR, a C1
#: control (CSI), a line separator, a bidi override.
RAW_CONTROLS = ("\x1b", "\r", "\x9b", "\u2028", "\u202e")


def test_plain_output_shows_control_characters_as_escapes(
    database: str, model_cache: Path, conn: Connection, embedder: Embedder
) -> None:
    """A key, a source name or a passage with control characters is one line of
    `search --documents`, `sources list` and `status`, its controls written as escapes:
    no forged result line, nothing the terminal acts on."""
    env = cli_env(database, model_cache)
    make_notes(conn, rows=1)
    name = "notes\x1b[31m\u202e"
    added = run_cli(["sources", "add", "notes", "--text", "body", "--name", name], env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added source notes\\x1b[31m\\u202e: key id (bigint), ")
    key = "900\n0.9999  documents  forged  a passage  [0:9]"
    passage = "PostgreSQL keeps rows\r in tables\x1b[2J and \x9b31m finds them \u2028 with indexes."
    index_document(conn, embedder, "documents", key, [passage])
    index_document(conn, embedder, name, "1", ["Cats sleep all day."])

    found = run_cli(["search", "--documents", "-k", "2", "rows in tables"], env)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 3, found.stdout  # two hits, two lines
    first, second = lines[:2]
    assert first.split("  ", 1)[1] == (
        "documents  900\\n0.9999  documents  forged  a passage  [0:9]  "
        f"PostgreSQL keeps rows in tables\\x1b[2J and \\x9b31m finds them with indexes.  "
        f"[0:{len(passage)}]"
    )
    assert second.split("  ")[1:3] == ["notes\\x1b[31m\\u202e", "1"]
    listed = run_cli(["sources", "list"], env)
    assert listed.stdout.splitlines()[1].startswith("notes\\x1b[31m\\u202e: 1 indexed")
    conn.execute("INSERT INTO chunks (content) VALUES ('a row')")
    conn.execute(
        "UPDATE chunks SET state = 'failed', attempts = 5, last_error = %s"
        " WHERE document_id IS NULL",
        ("boom\nfailed row 1 after 5 attempts: \x1b[2Jforged",),
    )
    conn.execute(
        "UPDATE source_documents SET state = 'failed', attempts = 5, last_error = %s"
        " WHERE doc_key = %s",
        ("boom\nfailed document x 1 after 5 attempts: \x1b[2Jforged", key),
    )
    status = run_cli(["status"], env)
    assert status.returncode == 0, status.stderr
    assert "attempts: boom\\nfailed row 1 after 5 attempts: \\x1b[2Jforged\n" in status.stdout
    assert (
        "failed document documents 900\\n0.9999  documents  forged  a passage  [0:9] after 5 "
        "attempts: boom\\nfailed document x 1 after 5 attempts: \\x1b[2Jforged\n"
    ) in status.stdout
    assert "source              notes\\x1b[31m\\u202e: " in status.stdout
    # 17 figures, a failed row, a failed document, two sources, one model
    assert len(status.stdout.splitlines()) == 22
    removed = run_cli(["sources", "remove", name], env)
    assert removed.stdout == "removed source notes\\x1b[31m\\u202e and 1 chunk of its documents\n"
    unknown = run_cli(["sources", "remove", "gone\x1b[2J"], env)
    assert unknown.stderr == "indexer: error: no source named gone\\x1b[2J\n"
    for result in (added, found, listed, status, removed, unknown):
        for control in RAW_CONTROLS:
            assert control not in result.stdout + result.stderr, (result.args, control)
