"""The embedded PostgreSQL as a new user meets it: several commands started at once on a
fresh data directory (the tour runs `make run` in one terminal and `indexer dsn` in
another)."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from pathlib import Path

from indexer.db import server

from ..conftest import TMP
from ..helpers import INDEXER, cli_env


def test_concurrent_commands_on_a_fresh_data_dir_all_succeed(model_cache: Path) -> None:
    base = TMP / f"race-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # as root, the server runs as its own user and must reach it
    data_dir = base / "pgdata"
    env = cli_env(None, model_cache, INDEXER_DATA_DIR=str(data_dir))
    commands = [["dsn"], ["migrate"], ["dsn"], ["migrate"], ["dsn"], ["dsn"]]

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*INDEXER, *args], env=env, capture_output=True, text=True, timeout=180, check=False
        )

    try:
        with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
            results = list(pool.map(run, commands))
        for args, result in zip(commands, results, strict=True):
            assert result.returncode == 0, (args, result.stderr)
            assert "Traceback" not in result.stderr, (args, result.stderr)
        dsns = {r.stdout.strip() for a, r in zip(commands, results, strict=True) if a == ["dsn"]}
        assert len(dsns) == 1 and dsns.pop().endswith(f"/indexer?host={data_dir}")
    finally:
        server.stop(data_dir)
