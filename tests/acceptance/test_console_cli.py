"""`indexer run --http` serves the web console at / as users start it: a real subprocess
behind a token, its figures those of `indexer status --json` (the page in a browser:
tests/integration/test_console_browser.py)."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx

from indexer.db.connect import Connection
from tests.acceptance.test_http_cli import free_port
from tests.helpers import CORPUS, cli_env, run_cli, start_daemon, wait_until
from tests.integration.test_http import insert


def test_the_daemon_serves_the_console_behind_its_token(
    database: str, model_cache: Path, conn: Connection, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "daemon.log"
    token = "console-acceptance-token"
    env = cli_env(database, model_cache, INDEXER_HTTP_TOKEN=token)
    daemon = start_daemon(env, log, "--http", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    bearer = {"authorization": f"Bearer {token}"}

    def healthy() -> bool:
        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_until(healthy, 90, interval=0.2), log.read_text()
        page = httpx.get(url + "/", timeout=30)
        assert page.status_code == 200 and "<title>indexer console</title>" in page.text
        for asset in re.findall(r'(?:src|href)="(console/[^"]+)"', page.text):
            assert httpx.get(f"{url}/{asset}", timeout=30).status_code == 200, asset
        assert httpx.get(url + "/console/api/overview", timeout=30).status_code == 401

        (cid,) = insert(conn, CORPUS["rain"])
        assert wait_until(
            lambda: (
                conn.execute("SELECT state FROM chunks WHERE id = %s", (cid,)).fetchone()
                == {"state": "embedded"}
            ),
            30,
        ), log.read_text()
        overview = httpx.get(url + "/console/api/overview", headers=bearer, timeout=30).json()
        status = run_cli(["status", "--json"], env)
        assert status.returncode == 0, status.stderr
        expected = json.loads(status.stdout)
        for field in ("backlog", "embedded", "failed", "active_workers", "documents"):
            assert overview["status"][field] == expected[field], field
        assert (overview["status"]["embedded"], overview["status"]["active_workers"]) == (1, 1)
        minutes = httpx.get(url + "/console/api/throughput", headers=bearer, timeout=30).json()
        assert sum(m["rows"] for m in minutes["minutes"]) == 1

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    assert "Traceback" not in log.read_text()
