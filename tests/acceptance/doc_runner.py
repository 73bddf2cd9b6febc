"""Runs one page's examples as a reader runs them, against a real server, and checks
that they print what the page shows (tests/doc_examples.py says how blocks are picked
and compared).

A page's blocks run in order in one fresh, migrated database, so the CLI's, psql's and
the Python API's steps must not trip over one another. The page's placeholders are the
reader's to replace and the test's too: ``.venv/bin/indexer`` is this checkout's command,
the example URL of ``db.example.com`` the test database, and port 8080 a free one.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from indexer.db.connect import Connection, connect
from indexer.embedding import Embedder

from ..doc_examples import Block, Page, mismatch
from ..helpers import cli_env, start_daemon, wait_until
from ..integration.sqla import sqlalchemy_url

#: The rows of the five-minute tour, in its order: later examples name them by id.
TOUR_ROWS = [
    ("PostgreSQL is an open source relational database.", '{"topic": "db"}'),
    ("Cats sleep up to sixteen hours a day.", '{"topic": "pets"}'),
    ("The stock market fell sharply today.", '{"topic": "news"}'),
]
EXAMPLE_URL = "postgresql://app:secret@db.example.com/app"
EXAMPLE_SQLALCHEMY_URL = "postgresql+psycopg://app:secret@db.example.com/app"
EXAMPLE_PORT = ":8080"

#: ``indexer`` on the blocks' PATH: this checkout's command.  A script that execs, not a
#: shell function, so that ``$!`` of ``indexer run ... &`` is the daemon itself.
INDEXER_SCRIPT = '#!/bin/sh\nexec "$EXAMPLES_PYTHON" -m indexer.cli "$@"\n'

#: Run before every sh block: background jobs (a line ending in ``&``) log to a file and
#: are stopped when the page ends, and an HTTP API started in the background is waited
#: for before the next line runs.
PRELUDE = r"""
__wait_http() {
    local address="${1/0.0.0.0/127.0.0.1}"
    for _ in $(seq 600); do
        curl -s -o /dev/null "http://$address/health" && return 0
        sleep 0.1
    done
    echo "the HTTP API at $address did not start" >&2
    return 1
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shell(block: str, port: int) -> str:
    lines = []
    block = block.replace(".venv/bin/indexer", "indexer")
    for line in block.replace(".venv/bin/python", '"$EXAMPLES_PYTHON"').splitlines():
        stripped = line.rstrip()
        if stripped.endswith("&") and not stripped.endswith("&&"):
            command = stripped[:-1].rstrip()
            lines.append(f'{command} >>"$EXAMPLES_LOG" 2>&1 &')
            lines.append('echo $! >>"$EXAMPLES_PIDS"')
            if "--http " in command:
                address = command.split("--http ", 1)[1].split()[0]
                lines.append(f"__wait_http {address}")
        else:
            lines.append(line)
    return PRELUDE + "\n".join(lines).replace(EXAMPLE_PORT, f":{port}")


class Runner:
    """One page's blocks, in order, in one database."""

    def __init__(self, page: Page, database: str, env: dict[str, str], tmp: Path) -> None:
        self.page = page
        self.database = database
        self.url = sqlalchemy_url(database, "postgresql").render_as_string(hide_password=False)
        self.sqlalchemy = sqlalchemy_url(database).render_as_string(hide_password=False)
        self.port = _free_port()
        self.tmp = tmp
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "indexer").write_text(INDEXER_SCRIPT)
        (bin_dir / "indexer").chmod(0o755)
        self.env = {
            **env,
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}",
            "EXAMPLES_PYTHON": sys.executable,
            "EXAMPLES_LOG": str(tmp / "background.log"),
            "EXAMPLES_PIDS": str(tmp / "background.pids"),
        }
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.daemon: subprocess.Popen[str] | None = None

    def _placeholders(self, text: str) -> str:
        text = text.replace(EXAMPLE_SQLALCHEMY_URL, self.sqlalchemy)
        # A Python block's base URL (an sh block's port is replaced by _shell already).
        text = text.replace(EXAMPLE_PORT, f":{self.port}")
        return text.replace(EXAMPLE_URL, self.url)

    def start_daemon(self) -> None:
        self.daemon = start_daemon(
            self.env, self.tmp / "daemon.log", "--http", f"127.0.0.1:{self.port}"
        )
        health = f"http://127.0.0.1:{self.port}/health"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(health, timeout=5):
                    return True
            except (OSError, urllib.error.URLError):
                return False

        assert wait_until(answers, timeout=120), (self.tmp / "daemon.log").read_text()

    def drained(self) -> bool:
        with psycopg.connect(self.database) as conn:
            row = conn.execute(
                "SELECT backlog = 0 AND documents_pending = 0 AND documents_in_flight = 0 "
                "AND NOT EXISTS (SELECT 1 FROM indexer_source_status WHERE NOT backfilled) "
                "FROM indexer_status"
            ).fetchone()
        return bool(row and row[0])

    def run(self, block: Block) -> str:
        """Run ``block``; what it printed on stdout."""
        if self.daemon is not None:
            assert wait_until(self.drained, timeout=120), f"{block.where}: the queue never drained"
        if block.tag == "python":
            return self._python(block)
        if block.tag == "sh":
            script = self._placeholders(_shell(block.text, self.port))
            command = ["bash", "-e", "-o", "pipefail", "-c", script]
            stdin = None
        else:  # on stdin, as pasted into psql: its backslash commands included
            psql = shutil.which("psql")
            assert psql is not None, "psql (the PostgreSQL client) runs the SQL examples"
            command = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.database]
            stdin = block.text
        result = subprocess.run(
            command,
            input=stdin,
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{block.where} failed:\n{block.text}\n{result.stderr}"
        assert "ERROR" not in result.stderr, f"{block.where}:\n{result.stderr}"
        return result.stdout

    def _python(self, block: Block) -> str:
        out = io.StringIO()
        code = compile(self._placeholders(block.text), block.where, "exec")
        with contextlib.redirect_stdout(out), contextlib.chdir(self.tmp):
            exec(code, self.namespace)
        return out.getvalue()

    def stop(self) -> None:
        pids = self.tmp / "background.pids"
        started = [int(pid) for pid in pids.read_text().split()] if pids.exists() else []
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

        def gone() -> bool:
            # Not our children (bash started them, and is gone): a pid that is no more,
            # or a zombie nobody has reaped yet, has stopped.
            for pid in started:
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    return False
            return True

        assert wait_until(gone, timeout=60), f"background jobs still running: {started}"
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(60)
        engine = self.namespace.get("engine")
        if engine is not None and hasattr(engine, "dispose"):
            engine.dispose()


@contextlib.contextmanager
def runner(page: Page, database: str, model_cache: Path, tmp: Path) -> Iterator[Runner]:
    env = cli_env(database, model_cache, INDEXER_LOG_LEVEL="WARNING")
    env["DATABASE_URL"] = sqlalchemy_url(database, "postgresql").render_as_string(
        hide_password=False
    )
    run = Runner(page, database, env, tmp)
    try:
        if "daemon" in page.options:
            run.start_daemon()
        yield run
    finally:
        run.stop()


def run_page(
    page: Page,
    database: str,
    model_cache: Path,
    embedder: Embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run ``page``'s blocks in order; fail at the first that fails or prints other than
    the page shows."""
    # Embedder() of a Python example uses the default cache (under XDG_CACHE_HOME): the
    # tests' converted model, not a second conversion.
    (tmp_path / "xdg" / "indexer").mkdir(parents=True)
    (tmp_path / "xdg" / "indexer" / "models").symlink_to(model_cache.resolve())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if "tour-rows" in page.options:
        vectors = embedder.embed([text for text, _ in TOUR_ROWS])
        conn: Connection = connect(database, "public", autocommit=True)
        with conn:
            for (text, metadata), vector in zip(TOUR_ROWS, vectors, strict=True):
                conn.execute(
                    "INSERT INTO chunks (content, metadata, embedding, state) "
                    "VALUES (%s, %s, %s, 'embedded')",
                    (text, metadata, vector),
                )
    work = tmp_path / "work"
    work.mkdir()
    with runner(page, database, model_cache, work) as run:
        for name in ("DATABASE_URL", "INDEXER_MODEL_CACHE"):
            monkeypatch.setenv(name, run.env[name])
        for block in page.blocks:
            if block.not_run is not None:
                continue
            printed = run.run(block)
            if block.output is not None:
                problem = mismatch(block.output, printed)
                assert problem is None, problem
