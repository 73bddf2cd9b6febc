"""`indexer run --http` as users start it: a real subprocess, real requests, SIGTERM."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import httpx
import pytest

from indexer.db.connect import Connection
from tests.helpers import CORPUS, cli_env, run_cli, start_daemon, wait_until
from tests.integration.test_http import insert

# -- the real command -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_serves_http_and_stops_on_sigterm(
    database: str, model_cache: Path, conn: Connection, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cli_env(database, model_cache), log, "--http", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_until(healthy, 90, interval=0.2), log.read_text()
        (cid,) = insert(conn, CORPUS["cat"])
        assert wait_until(
            lambda: (
                conn.execute("SELECT state FROM chunks WHERE id = %s", (cid,)).fetchone()
                == {"state": "embedded"}
            ),
            30,
        ), log.read_text()
        found = httpx.post(url + "/search", json={"query": "a sleepy kitten"}, timeout=30)
        assert found.json()["results"][0]["id"] == cid
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    text = log.read_text()
    assert "Traceback" not in text
    assert (
        f"HTTP API on http://127.0.0.1:{port}, authentication off (set INDEXER_HTTP_TOKEN" in text
    )
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=5)


def test_cli_refuses_a_port_in_use(database: str, model_cache: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["run", "--http", f"127.0.0.1:{port}"], cli_env(database, model_cache))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"indexer: error: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert "Traceback" not in result.stderr


def test_cli_with_a_token_guards_the_api_and_never_logs_it(
    database: str, model_cache: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "daemon.log"
    token = "acceptance-s3cret-token"
    env = cli_env(database, model_cache, INDEXER_HTTP_TOKEN=token, INDEXER_LOG_LEVEL="DEBUG")
    daemon = start_daemon(env, log, "--http", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_until(healthy, 90, interval=0.2), log.read_text()
        assert httpx.get(url + "/metrics", timeout=30).status_code == 401
        wrong = httpx.get(url + "/metrics", headers={"authorization": "Bearer x"}, timeout=30)
        assert wrong.status_code == 401
        bearer = {"authorization": f"Bearer {token}"}
        right = httpx.get(url + "/metrics", headers=bearer, timeout=30)
        assert right.status_code == 200
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    text = log.read_text()
    assert token not in text
    start = [line for line in text.splitlines() if "HTTP API on" in line]
    assert len(start) == 1 and start[0].endswith(
        f"HTTP API on {url}, authentication on (1 bearer token accepted)"
    ), start


def test_cli_refuses_an_unreadable_token_file(
    database: str, model_cache: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-file"
    env = cli_env(database, model_cache, INDEXER_HTTP_TOKEN_FILE=str(missing))
    result = run_cli(["run", "--http", f"127.0.0.1:{free_port()}"], env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"indexer: error: INDEXER_HTTP_TOKEN_FILE={str(missing)!r} cannot be read: "
        "No such file or directory"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ([], {"INDEXER_HTTP_TOKEN": " "}, "INDEXER_HTTP_TOKEN"),
        ([], {"INDEXER_HTTP_TOKEN": "\n"}, "INDEXER_HTTP_TOKEN"),
        (["--http-token", "\t"], {}, "--http-token"),
    ],
)
def test_cli_refuses_a_blank_token(
    database: str, model_cache: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    command = ["run", "--http", f"127.0.0.1:{free_port()}", *args]
    result = run_cli(command, cli_env(database, model_cache, **env))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"indexer: error: {named} is blank (only whitespace): set it to a secret, "
        "or unset it for an HTTP API without authentication"
    ]
