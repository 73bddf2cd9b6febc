"""The bench's remote row on 40 rows, through the real CLI: behaviour, never timing.

Each drain (in-process, remote, throttled) embeds every row and fails none; the remote
drains went through HTTP requests of at most ``--batch-size`` inputs; the throttling
proxy refused some of them and each refusal was waited out and counted as a deferral
(read back from the drain's events), never as a failure; the report carries the row's
two targets; the scratch schemas are gone and the embeddings server is stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import psycopg

from indexer.bench.proxy import THROTTLE_EVERY

from ..helpers import cli_env, run_cli

ROWS = 40
BATCH = 8
TARGETS = (
    "remote model vs in-process (same model, same rows)",
    "remote model throttled (429 to 1 request in 3) vs unthrottled",
)


def test_remote_row_on_a_few_rows(database: str, model_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = cli_env(database, model_cache)
    args = ["bench", "--only", "remote", "--remote-rows", str(ROWS), "--repeats", "1"]
    args += ["--batch-size", str(BATCH), "--json", str(out)]
    result = run_cli(args, env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"remote"}
    remote = report["results"]["remote"]
    assert "error" not in remote, remote
    assert (remote["rows"], remote["batch_size"], remote["in_flight"]) == (ROWS, BATCH, 4)

    requests = math.ceil(ROWS / BATCH)
    for path in ("local", "remote", "throttled"):
        figures = remote[path]
        assert figures["failed"] == figures["batch_failed"] == 0, (path, figures)
        assert figures["rows_per_s"] > 0
        assert len(figures["runs_s"]) == 1
        run = figures["median_run"]
        assert (run["embedded"], run["failed"]) == (ROWS, 0), (path, run)
        assert run["batches"] >= requests
    assert remote["local"]["median_run"]["requests"] == 0  # no HTTP for the in-process model
    assert remote["remote"]["median_run"]["requests"] == requests
    assert remote["remote"]["median_run"]["deferrals"] == 0

    # Every third request refused and sent again: each refusal a deferral, no failure.
    throttled = remote["throttled"]
    assert throttled["proxy_throttled"] >= requests // THROTTLE_EVERY >= 1
    assert throttled["deferrals"] == throttled["proxy_throttled"]
    assert throttled["requests"] == requests + throttled["deferrals"]
    assert remote["ratio_to_local"] > 0 and remote["throttled_ratio"] > 0

    targets = {t["name"]: t for t in report["targets"]}
    assert tuple(targets) == TARGETS
    assert targets[TARGETS[0]]["checks"][0]["figure"] == remote["ratio_to_local"]
    checks = {c["label"]: c for c in targets[TARGETS[1]]["checks"]}
    assert checks["failed"]["met"] is True and checks["deferrals"]["met"] is True
    assert checks[""]["figure"] == remote["throttled_ratio"]
    for name in TARGETS:
        assert f"{targets[name]['verdict']:<12} {name}" in result.stdout
        assert f"at {ROWS} rows, not 2k" in targets[name]["note"]

    with psycopg.connect(database) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'indexer_bench%'"
        ).fetchall()
    assert left == []
