"""The daemon as users run it: `indexer run` in a subprocess, signals, the run lock."""

from __future__ import annotations

import signal
import time
from functools import partial
from pathlib import Path

import pytest

from indexer.db.connect import Connection

from ..helpers import cli_env, run_cli, start_daemon, wait_until
from ..integration.test_worker import has_vector, insert


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_embeds_on_notify_and_stops_cleanly_on_signal(
    database: str, model_cache: Path, conn: Connection, tmp_path: Path, sig: signal.Signals
) -> None:
    # A long poll interval: only NOTIFY can make this fast.
    env = cli_env(database, model_cache, INDEXER_POLL_INTERVAL="60")
    log = tmp_path / "daemon.log"
    daemon = start_daemon(env, log)
    try:
        assert wait_until(
            lambda: (
                conn.execute("SELECT 1 FROM events WHERE kind = 'worker_started'").fetchone()
                is not None
            ),
            60,
        ), log.read_text()
        latencies = []
        for i in range(5):
            start = time.monotonic()
            (cid,) = insert(conn, f"notify me {i}")
            assert wait_until(partial(has_vector, conn, cid), 20), log.read_text()
            latencies.append(time.monotonic() - start)
        print(f"insert -> embedded: median {sorted(latencies)[2] * 1000:.0f} ms")
        daemon.send_signal(sig)
        assert daemon.wait(30) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM events ORDER BY id")]
    assert kinds[-1] == "worker_stopped"
    assert "Traceback" not in log.read_text()


def test_second_daemon_on_one_embedded_data_dir_is_refused(
    tmp_path: Path, model_cache: Path
) -> None:
    from indexer.db import server
    from indexer.exceptions import AlreadyRunning

    data_dir = tmp_path / "pgdata"
    with server.run_lock(data_dir):
        with pytest.raises(AlreadyRunning), server.run_lock(data_dir):
            pass
        env = cli_env(None, model_cache, INDEXER_DATA_DIR=str(data_dir))
        result = run_cli(["run", "--once"], env, timeout=60)
    assert result.returncode == 1
    assert "already uses the embedded database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
