"""Chunk settings are recorded (migration 0009): a daemon with others is refused with one
line while passages exist, and `indexer sources recut` cuts every document again."""

from __future__ import annotations

from pathlib import Path

from indexer.db.connect import Connection

from ..helpers import cli_env, run_cli


def _passages(conn: Connection) -> list[tuple[int, int]]:
    rows = conn.execute(
        "SELECT doc_key::int AS key, count(*) AS n FROM chunks WHERE document_id IS NOT NULL"
        " GROUP BY doc_key ORDER BY 1"
    ).fetchall()
    return [(r["key"], r["n"]) for r in rows]


def test_other_chunk_settings_are_refused_until_every_document_is_cut_again(
    database: str, model_cache: Path, conn: Connection
) -> None:
    text = " ".join(f"word{i} means something about topic {i % 7}." for i in range(300))
    conn.execute("INSERT INTO documents (content) VALUES (%s), (%s)", (text, text[:900]))
    env = cli_env(database, model_cache)
    first = run_cli(["run", "--once", "--no-progress"], env, timeout=300)
    assert first.returncode == 0, first.stderr
    before = _passages(conn)
    assert before and before[0][1] > 1

    smaller = {**env, "INDEXER_CHUNK_TOKENS": "64", "INDEXER_CHUNK_OVERLAP": "8"}
    refused = run_cli(["run", "--once", "--no-progress"], smaller, timeout=300)
    assert refused.returncode == 1
    errors = [x for x in refused.stderr.splitlines() if "error" in x]
    assert len(errors) == 1, refused.stderr  # one line, no traceback
    line = errors[0]
    assert "documents are cut into passages of 128 tokens, 16 overlapping" in line
    assert "indexer sources recut" in line
    assert _passages(conn) == before  # nothing was cut otherwise

    recut = run_cli(["sources", "recut"], smaller)
    assert recut.returncode == 0, recut.stderr
    assert "2 documents queued again" in recut.stdout
    again = run_cli(["run", "--once", "--no-progress"], smaller, timeout=300)
    assert again.returncode == 0, again.stderr
    after = _passages(conn)
    assert [k for k, _ in after] == [k for k, _ in before]
    assert all(n > m for (_, n), (_, m) in zip(after, before, strict=True))
    # And now the old settings are the ones refused.
    assert run_cli(["run", "--once", "--no-progress"], env, timeout=300).returncode == 1
