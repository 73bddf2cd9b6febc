"""The real `indexer` command, run in a subprocess against the real database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from indexer.db.connect import Connection
from indexer.embedding import Embedder

from ..helpers import cli_env, run_cli


def test_dsn_with_database_url(database: str, model_cache: Path) -> None:
    result = run_cli(["dsn"], cli_env(database, model_cache))
    assert result.returncode == 0
    assert result.stdout.strip() == database


def test_dsn_starts_the_embedded_server(data_dir: Path, server_dsn: str, model_cache: Path) -> None:
    env = cli_env(None, model_cache, INDEXER_DATA_DIR=str(data_dir))
    result = run_cli(["dsn"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"/indexer?host={data_dir}")


def test_migrate_reports_the_revision(database: str, model_cache: Path) -> None:
    from indexer.db import migrate

    result = run_cli(["migrate"], cli_env(database, model_cache))
    assert result.returncode == 0, result.stderr
    assert f"is already at revision {migrate.head_revision()}" in result.stdout


def test_embed_adds_vectors_and_keeps_fields(model_cache: Path, embedder: Embedder) -> None:
    lines: list[dict[str, Any]] = [
        {"text": "hello world", "id": 7, "tags": ["a"]},
        {"text": "", "x": None},
        {"text": "naïve café ☕"},
    ]
    stdin = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    result = run_cli(["embed"], cli_env(None, model_cache), input=stdin)
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 3
    for record, original in zip(out, lines, strict=True):
        vector = np.array(record.pop("embedding"), dtype=np.float32)
        assert record == original
        expected = embedder.embed([original["text"]])[0]
        assert float(np.dot(vector, expected)) > 0.9999


def test_embed_rejects_a_bad_line_with_its_number(model_cache: Path) -> None:
    stdin = '{"text": "fine"}\n{"text": 3}\n'
    result = run_cli(["embed"], cli_env(None, model_cache), input=stdin)
    assert result.returncode == 1
    assert json.loads(result.stdout.splitlines()[0])["text"] == "fine"  # nothing lost before
    assert result.stderr.strip() == (
        'indexer: error: line 2: expected an object with a string "text" field'
    )
    bad_json = run_cli(["embed"], cli_env(None, model_cache), input="{oops\n")
    assert bad_json.returncode == 1
    assert "line 1: not valid JSON" in bad_json.stderr


def test_run_once_then_search_and_status(
    database: str, model_cache: Path, conn: Connection
) -> None:
    conn.execute(
        "INSERT INTO chunks (content, metadata) VALUES"
        " ('The Eiffel Tower is in Paris, France.', '{\"lang\": \"en\"}'),"
        " ('Bananas are rich in potassium.', '{}'),"
        " ('Rust is a systems programming language.', '{}')"
    )
    env = cli_env(database, model_cache)
    run = run_cli(["run", "--once"], env)
    assert run.returncode == 0, run.stderr
    assert "3 rows embedded" in run.stderr

    text = run_cli(["search", "famous landmark in France", "-k", "2"], env)
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0].split(maxsplit=2)
    assert first[0] == "1"
    assert 0 < float(first[1]) <= 1
    assert "Eiffel" in first[2]

    as_json = run_cli(["search", "fruit nutrition", "-k", "1", "--json"], env)
    hit = json.loads(as_json.stdout)
    assert hit["content"] == "Bananas are rich in potassium."
    assert set(hit) == {"id", "score", "content", "metadata"}

    status = json.loads(run_cli(["status", "--json"], env).stdout)
    assert status["embedded"] == 3
    assert status["backlog"] == 0
    assert status["failed"] == 0
    assert status["rows_per_second"] > 0


def test_row_search_shows_control_characters_as_escapes(
    database: str, model_cache: Path, conn: Connection, embedder: Embedder
) -> None:
    content = "The Eiffel Tower\x1b]0;pwned\x07 is in\r\nParis, \u202eFrance\x85 \x9b2J end"
    conn.execute(
        "INSERT INTO chunks (content, embedding, state) VALUES (%s, %s, 'embedded')",
        (content, embedder.embed([content])[0]),
    )
    found = run_cli(["search", "Eiffel Tower", "-k", "1"], cli_env(database, model_cache))
    assert found.returncode == 0, found.stderr
    assert found.stdout.endswith("\n") and found.stdout.count("\n") == 1, found.stdout
    # Whitespace (the line break, NEL) is one space, as before; the rest is escaped.
    assert found.stdout.split(maxsplit=2)[2] == (
        "The Eiffel Tower\\x1b]0;pwned\\x07 is in Paris, \\u202eFrance \\x9b2J end\n"
    )


def test_the_int8_variant_end_to_end(database: str, model_cache: Path, conn: Connection) -> None:
    conn.execute(
        "INSERT INTO chunks (content) VALUES"
        " ('The Eiffel Tower is in Paris, France.'), ('Bananas are rich in potassium.')"
    )
    env = cli_env(database, model_cache, INDEXER_MODEL_VARIANT="int8")
    run = run_cli(["run", "--once"], env)
    assert run.returncode == 0, run.stderr
    models = {r["embedding_model"] for r in conn.execute("SELECT embedding_model FROM chunks")}
    assert models == {"all-MiniLM-L6-v2-int8"}  # the rows say which variant made them
    hit = json.loads(
        run_cli(["search", "famous landmark in France", "-k", "1", "--json"], env).stdout
    )
    assert "Eiffel" in hit["content"]

    bad = run_cli(["status"], cli_env(database, model_cache, INDEXER_MODEL_VARIANT="int4"))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "indexer: error: INDEXER_MODEL_VARIANT must be 'fp32' or 'int8'"
    ]


def test_search_rejects_bad_k_and_empty_query(database: str, model_cache: Path) -> None:
    env = cli_env(database, model_cache)
    bad_k = run_cli(["search", "x", "-k", "0"], env)
    assert bad_k.returncode == 1
    assert "between 1 and 1000" in bad_k.stderr
    empty = run_cli(["search", "   "], env)
    assert empty.returncode == 1
    assert "empty" in empty.stderr


def test_help_names_every_environment_variable(model_cache: Path) -> None:
    result = run_cli(["run", "--help"], cli_env(None, model_cache))
    assert result.returncode == 0
    for variable in (
        "DATABASE_URL",
        "INDEXER_DATA_DIR",
        "INDEXER_BATCH_SIZE",
        "INDEXER_TOKEN_BUDGET",
        "INDEXER_LEASE_SECONDS",
        "INDEXER_HTTP",
    ):
        assert variable in result.stdout


def test_command_line_option_overrides_environment(database: str, model_cache: Path) -> None:
    env = cli_env(database, model_cache, INDEXER_SCHEMA="not a schema")
    result = run_cli(["status", "--schema", "public"], env)
    assert result.returncode == 0, result.stderr


def test_search_filter_retry_by_id_and_version(
    database: str, model_cache: Path, conn: Connection
) -> None:
    conn.execute(
        "INSERT INTO chunks (content, metadata) VALUES"
        " ('Paris is the capital of France.', '{\"lang\": \"en\"}'),"
        " ('Paris est la capitale de la France.', '{\"lang\": \"fr\"}')"
    )
    env = cli_env(database, model_cache)
    assert run_cli(["run", "--once"], env).returncode == 0
    french = run_cli(["search", "capital of France", "--filter", '{"lang": "fr"}', "--json"], env)
    assert french.returncode == 0, french.stderr
    hits = [json.loads(line) for line in french.stdout.splitlines()]
    assert [h["metadata"] for h in hits] == [{"lang": "fr"}]
    for bad, why in (("[1]", "expected a JSON object"), ("{oops", "not valid JSON")):
        refused = run_cli(["search", "x", "--filter", bad], env)
        assert refused.returncode == 1 and why in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

    conn.execute("UPDATE chunks SET state = 'failed', attempts = 5 WHERE id = 2")
    neither = run_cli(["retry"], env)
    assert neither.returncode == 1 and "--failed" in neither.stderr
    one = run_cli(["retry", "--id", "2"], env)
    assert one.returncode == 0 and "re-queued 1 failed rows" in one.stdout
    row = conn.execute("SELECT state FROM chunks WHERE id = 2").fetchone()
    assert row is not None and row["state"] == "pending"

    version = run_cli(["--version"], env)
    assert version.returncode == 0 and version.stdout.startswith("indexer 0.")


def test_a_misspelled_variable_is_one_warning_naming_the_real_one(
    database: str, model_cache: Path
) -> None:
    env = cli_env(database, model_cache, INDEXER_CHUNK_SIZE="64")
    result = run_cli(["status"], env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "INDEXER_CHUNK_SIZE" in line]
    assert len(warnings) == 1, result.stderr
    assert "WARNING" in warnings[0]
    assert warnings[0].endswith(
        "INDEXER_CHUNK_SIZE is not a setting of the indexer: it is ignored; "
        "did you mean INDEXER_CHUNK_TOKENS?"
    )
