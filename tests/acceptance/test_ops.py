"""Operating the daemon: event pruning, JSON logs, `status --json`, the progress bar."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from indexer.db.connect import Connection
from indexer.embedding import Embedder

from ..helpers import cli_env, run_cli

TEXTS = [
    "PostgreSQL is an open source relational database.",
    "Cats like to sleep in the sun.",
    "The stock market fell sharply today.",
]


def insert(conn: Connection, *texts: str) -> list[int]:
    rows = conn.execute(
        "INSERT INTO chunks (content) SELECT unnest(%s::text[]) RETURNING id", (list(texts),)
    ).fetchall()
    return [r["id"] for r in rows]


def test_events_prune_deletes_only_old_events(
    database: str, model_cache: Path, conn: Connection
) -> None:
    worker = uuid.uuid4()
    for age in ("30 days", "8 days", "6 days", "1 minute"):
        conn.execute(
            "INSERT INTO events (kind, worker_id, at, detail) VALUES"
            " ('worker_started', %s, now() - %s::interval, jsonb_build_object('age', %s::text))",
            (worker, age, age),
        )
    result = run_cli(["events", "prune"], cli_env(database, model_cache))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pruned 2 events older than 7 days"
    left = [r["age"] for r in conn.execute("SELECT detail->>'age' AS age FROM events ORDER BY id")]
    assert left == ["6 days", "1 minute"]

    # The retention is a setting like any other.
    result = run_cli(
        ["events", "prune", "--events-retention-days", "0.5"], cli_env(database, model_cache)
    )
    assert result.stdout.strip() == "pruned 1 event older than 0.5 days"
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone() == {"n": 1}


def test_json_logs_are_one_object_per_line_with_the_batch(
    database: str, model_cache: Path, conn: Connection, embedder: Embedder
) -> None:
    insert(conn, *TEXTS)
    result = run_cli(["run", "--once", "--log-format", "json"], cli_env(database, model_cache))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines
    entries = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(
        isinstance(e, dict) and {"time", "level", "logger", "message"} <= set(e) for e in entries
    )
    batches = [e for e in entries if "rows" in e and "tokens" in e]
    assert len(batches) == 1
    batch = batches[0]
    assert batch["level"] == "INFO"
    assert batch["rows"] == len(TEXTS)
    assert batch["tokens"] == sum(embedder.count_tokens(TEXTS))
    assert batch["failed"] == 0 and batch["embed_ms"] > 0
    uuid.UUID(batch["batch_id"])


def test_status_json_numbers(database: str, model_cache: Path, conn: Connection) -> None:
    env = cli_env(database, model_cache)
    ids = insert(conn, *TEXTS)
    before = run_cli(["status", "--json"], env)
    assert before.returncode == 0, before.stderr
    status = json.loads(before.stdout)
    assert (status["pending"], status["in_flight"], status["embedded"], status["failed"]) == (
        3,
        0,
        0,
        0,
    )
    assert status["backlog"] == 3
    assert status["oldest_pending_age"] >= 0
    assert status["eta"] is None and status["failed_rows"] == []

    assert run_cli(["run", "--once"], env).returncode == 0
    conn.execute(
        "UPDATE chunks SET state = 'failed', attempts = 5, last_error = 'boom' WHERE id = %s",
        (ids[0],),
    )
    insert(conn, "one more")
    after = json.loads(run_cli(["status", "--json"], env).stdout)
    assert (after["pending"], after["embedded"], after["failed"], after["backlog"]) == (1, 2, 1, 1)
    assert after["rows_per_second"] > 0  # three rows embedded within the last minute
    assert after["active_workers"] == 0  # the --once daemon has stopped
    assert after["eta"] is None  # and nothing else drains the backlog
    assert [(r["id"], r["attempts"], r["last_error"]) for r in after["failed_rows"]] == [
        (ids[0], 5, "boom")
    ]


def test_cache_commands(database: str, model_cache: Path, conn: Connection) -> None:
    env = cli_env(database, model_cache)
    ids = insert(conn, *TEXTS)
    assert run_cli(["run", "--once", "--no-progress"], env).returncode == 0
    conn.execute("DELETE FROM chunks WHERE id = %s", (ids[0],))
    insert(conn, TEXTS[0])
    assert run_cli(["run", "--once", "--no-progress"], env).returncode == 0

    stats = json.loads(run_cli(["cache", "stats", "--json"], env).stdout)
    assert (stats["entries"], stats["rows_written"], stats["rows_reused"]) == (3, 4, 1)
    assert stats["hit_rate"] == 0.25 and stats["bytes"] > 0
    assert list(stats["models"].values()) == [3]
    text = run_cli(["cache", "stats"], env).stdout
    assert "hit rate            25.0%" in text
    status = run_cli(["status"], env).stdout
    assert "cache hit rate      0.25" in status

    purged = run_cli(["cache", "purge", "--text", TEXTS[1]], env)
    assert purged.stdout.strip() == "purged 1 cached vector"
    purged = run_cli(["cache", "purge", "--id", str(ids[2]), "--text", "never seen"], env)
    assert purged.stdout.strip() == "purged 1 cached vector"
    pruned = run_cli(["cache", "prune"], env)
    assert pruned.stdout.startswith("pruned 0 cached vectors (unused for 90 days")
    assert run_cli(["cache", "purge", "--all"], env).stdout.strip() == (
        "deleted every cached vector"
    )
    assert json.loads(run_cli(["cache", "stats", "--json"], env).stdout)["entries"] == 0


def test_cache_commands_refuse_bad_input_with_one_line(database: str, model_cache: Path) -> None:
    env = cli_env(database, model_cache)
    cases = {
        ("cache", "purge"): "say what to purge",
        ("cache", "purge", "--hash", "abc"): "is not a sha256 in hex",
        ("cache", "purge", "--all", "--text", "x"): "--all deletes everything",
        ("run", "--once", "--cache", "maybe"): "is not on/off",
    }
    for argv, message in cases.items():
        result = run_cli(list(argv), env)
        assert result.returncode in (1, 2), argv
        lines = result.stderr.strip().splitlines()
        assert message in lines[-1], (argv, result.stderr)
        assert "Traceback" not in result.stderr
    bad_env = {**env, "INDEXER_CACHE": "maybe"}
    result = run_cli(["status"], bad_env)
    assert result.returncode == 1
    assert result.stderr.strip() == "indexer: error: INDEXER_CACHE='maybe' is not on or off"
