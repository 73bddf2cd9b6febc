"""A database URL that cannot work: one line on stderr, exit 1, no password, no waiting."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from indexer.db import migrate

from ..conftest import with_database
from ..helpers import cli_env, run_cli

MALFORMED = "postgres//app:secret@localhost/db"
#: Far below INDEXER_DB_DOWN_TIMEOUT (300 s), which an outage would wait out.
QUICK_S = 30


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("indexer: error: ")
    return lines[0]


@pytest.mark.parametrize("command", [["migrate"], ["status"], ["run", "--once"], ["dsn"]])
def test_malformed_url_is_refused_at_once_without_its_password(
    command: list[str], model_cache: Path
) -> None:
    started = time.monotonic()
    result = run_cli(command, cli_env(MALFORMED, model_cache), timeout=QUICK_S)
    assert time.monotonic() - started < QUICK_S
    line = _one_line_error(result)
    assert "invalid database URL" in line
    assert "secret" not in result.stdout + result.stderr


def _socket_dir(server_dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(server_dsn)["host"])


@pytest.mark.parametrize("case", ["closed port", "missing database", "missing role"])
def test_migrate_says_in_one_line_why_it_cannot_connect(
    case: str, server_dsn: str, model_cache: Path
) -> None:
    url = {
        "closed port": "postgresql://postgres@127.0.0.1:1/x",
        "missing database": with_database(server_dsn, "no_such_database"),
        "missing role": f"postgresql://nosuchrole@/indexer?host={_socket_dir(server_dsn)}",
    }[case]
    line = _one_line_error(run_cli(["migrate"], cli_env(url, model_cache), timeout=QUICK_S))
    assert "cannot connect to PostgreSQL" in line


def test_migrate_says_whether_it_changed_the_schema(empty_database: str, model_cache: Path) -> None:
    env = cli_env(empty_database, model_cache)
    head = migrate.head_revision()
    first = run_cli(["migrate"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"schema 'public' upgraded from nothing to {head}"
    second = run_cli(["migrate"], env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"schema 'public' is already at revision {head}"


def test_a_sqlalchemy_url_is_accepted(database: str, model_cache: Path) -> None:
    # README's own form, postgresql+psycopg://, which libpq alone refuses.
    info = psycopg.conninfo.conninfo_to_dict(database)
    for driver in ("psycopg", "psycopg2"):
        url = f"postgresql+{driver}://{info['user']}@/{info['dbname']}?host={info['host']}"
        env = cli_env(url, model_cache)
        for command in (["migrate"], ["status"]):
            result = run_cli(command, env, timeout=QUICK_S)
            assert result.returncode == 0, result.stderr
            assert "error" not in result.stderr
