"""`indexer models list|add|activate|drop` and `indexer search --model`, as a user runs
them; GET /models."""

from __future__ import annotations

import json
from pathlib import Path

from indexer.db.connect import Connection

from ..helpers import cli_env, run_cli

TINY = Path(__file__).parent.parent / "fixtures" / "models" / "bert-cls"


def test_add_fill_activate_search_and_drop_from_the_command_line(
    database: str, model_cache: Path, conn: Connection
) -> None:
    conn.execute("INSERT INTO chunks (content) VALUES ('red apples'), ('green pears')")
    env = cli_env(database, model_cache)
    assert run_cli(["run", "--once", "--no-progress"], env, timeout=300).returncode == 0

    added = run_cli(["models", "add", str(TINY), "--name", "tiny"], env, timeout=300)
    assert added.returncode == 0, added.stderr
    assert "added model tiny" in added.stdout
    again = run_cli(["models", "add", str(TINY), "--name", "other"], env, timeout=300)
    assert again.returncode == 1
    assert again.stderr.strip().endswith("this model is already registered, as tiny")

    early = run_cli(["models", "activate", "tiny"], env)
    assert early.returncode == 1
    assert "model tiny lacks vectors for 2 of 2 embedded chunks" in early.stderr

    assert run_cli(["run", "--once", "--no-progress"], env, timeout=300).returncode == 0
    listed = run_cli(["models", "list", "--json"], env)
    rows = {r["model"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert rows["tiny"]["missing"] == 0 and rows["tiny"]["covered"] == 2
    assert rows["all-MiniLM-L6-v2"]["active"] is True
    text = run_cli(["models", "list"], env).stdout
    assert "* all-MiniLM-L6-v2: 384 dimensions in chunks.embedding; 2/2 chunks covered" in text

    activated = run_cli(["models", "activate", "tiny"], env)
    assert activated.returncode == 0, activated.stderr
    found = run_cli(["search", "apples", "-k", "2", "--json"], env, timeout=300)
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.splitlines()) == 2
    first = run_cli(
        ["search", "apples", "-k", "1", "--json", "--model", "all-MiniLM-L6-v2"], env, timeout=300
    )
    assert json.loads(first.stdout)["content"] == "red apples"
    unknown = run_cli(["search", "apples", "--model", "nope"], env, timeout=300)
    assert unknown.returncode == 1
    assert "no model named 'nope'" in unknown.stderr

    refused = run_cli(["models", "drop", "tiny"], env)
    assert refused.returncode == 1 and "model tiny is active" in refused.stderr
    assert run_cli(["models", "activate", "all-MiniLM-L6-v2"], env).returncode == 0
    dropped = run_cli(["models", "drop", "tiny"], env)
    assert dropped.returncode == 0, dropped.stderr
    assert [
        json.loads(x)["model"]
        for x in run_cli(["models", "list", "--json"], env).stdout.splitlines()
    ] == ["all-MiniLM-L6-v2"]


def test_vectors_imported_for_a_model_are_not_computed_again(
    database: str, model_cache: Path, conn: Connection
) -> None:
    conn.execute("INSERT INTO chunks (content) VALUES ('one'), ('two'), ('three')")
    env = cli_env(database, model_cache)
    assert run_cli(["run", "--once", "--no-progress"], env, timeout=300).returncode == 0
    assert run_cli(["models", "add", str(TINY), "--name", "tiny"], env, timeout=300).returncode == 0
    # Import: vectors computed elsewhere (here: any 32-dimensional ones) for every chunk.
    conn.execute(
        "INSERT INTO model_2_vectors (chunk_id, content_version, embedding)"
        " SELECT id, content_version, array_fill(0.5::real, ARRAY[32])::vector FROM chunks"
    )
    assert run_cli(["run", "--once", "--no-progress"], env, timeout=300).returncode == 0
    row = conn.execute(
        "SELECT count(*) AS n FROM model_2_vectors WHERE embedding = array_fill(0.5::real,"
        " ARRAY[32])::vector"
    ).fetchone()
    assert row is not None and row["n"] == 3  # kept: the daemon embedded none of them
    assert conn.execute(
        "SELECT count(*) AS n FROM events WHERE kind = 'model_batch'"
    ).fetchone() == {"n": 0}
