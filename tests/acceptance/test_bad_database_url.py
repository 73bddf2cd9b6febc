"""A database URL that cannot work: one line on stderr, exit 1, no password, no waiting.

Waiting is for outages (no server there yet, or one starting or stopping): a server that
answers and refuses the login (a wrong password, no such role or database) is told at
once, whatever INDEXER_DB_DOWN_TIMEOUT says.  The daemon logs "database unavailable,
retrying" when it takes a failure for an outage, so that line's absence is what shows it
did not wait.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from indexer.db import migrate, server

from ..conftest import TMP, with_database
from ..helpers import cli_env, run_cli, start_daemon, wait_until

MALFORMED = "postgres//app:secret@localhost/db"
RETRYING = "database unavailable, retrying"


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
    # Not retried: the one line on stderr is the error, no "retrying" before it (the
    # timeout only bounds a hang: an outage would be waited out for 300 s).
    result = run_cli(command, cli_env(MALFORMED, model_cache))
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
    line = _one_line_error(run_cli(["migrate"], cli_env(url, model_cache)))
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
    # The docs' SQLAlchemy form, postgresql+psycopg://, which libpq alone refuses.
    info = psycopg.conninfo.conninfo_to_dict(database)
    for driver in ("psycopg", "psycopg2"):
        url = f"postgresql+{driver}://{info['user']}@/{info['dbname']}?host={info['host']}"
        env = cli_env(url, model_cache)
        for command in (["migrate"], ["status"]):
            result = run_cli(command, env)
            assert result.returncode == 0, result.stderr
            assert "error" not in result.stderr


# -- a server that answers "no" ------------------------------------------------------------

ROLE = "indexer_password_test"
PASSWORD = "the-right-one"


def _url(base: str, **params: str) -> str:
    """``base`` (a DSN) with these connection parameters replaced."""
    info = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(base).items()}
    info.update(params)
    return psycopg.conninfo.make_conninfo(**info)


def _logs_in(url: str) -> bool:
    try:
        psycopg.connect(url).close()
    except psycopg.OperationalError:
        return False
    return True


@dataclass(frozen=True)
class PasswordServer:
    """An embedded server on which ROLE must give its password (scram-sha-256)."""

    data_dir: Path
    dsn: str


@pytest.fixture(scope="module")
def password_server() -> Iterator[PasswordServer]:
    """A server of this module's own: the session's server trusts every local user, and
    its pg_hba.conf is not these tests' to change."""
    data_dir = TMP / f"pg-password-{uuid.uuid4().hex[:8]}"
    dsn = server.start(data_dir)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(PASSWORD)
                )
            )
            row = conn.execute("SHOW hba_file").fetchone()
            assert row is not None
            hba = Path(row[0])
            # Ahead of the "local all all trust" line: the first line that matches decides.
            hba.write_text(f"local all {ROLE} scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        # The server rereads pg_hba.conf in the background: wait until the rule holds.
        assert wait_until(lambda: not _logs_in(_url(dsn, user=ROLE, password="wrong")), 60, 0.1)
        assert _logs_in(_url(dsn, user=ROLE, password=PASSWORD))
        yield PasswordServer(data_dir, dsn)
    finally:
        server.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _refused_at_once(result: subprocess.CompletedProcess[str]) -> str:
    """The command's one line, after it took the server's answer as final: it did not
    log the outage that it would otherwise have retried for INDEXER_DB_DOWN_TIMEOUT."""
    assert RETRYING not in result.stderr, result.stderr
    return _one_line_error(result)


def _quiet_env(url: str, model_cache: Path) -> dict[str, str]:
    # WARNING: the retry line still shows; the INFO line of a first model conversion not.
    env = cli_env(url, model_cache, INDEXER_LOG_LEVEL="WARNING", INDEXER_DB_DOWN_TIMEOUT="2")
    env.pop("PGPASSWORD", None)
    return env


@pytest.mark.parametrize("case", ["missing role", "missing database"])
def test_run_does_not_wait_for_a_role_or_database_that_does_not_exist(
    case: str, server_dsn: str, model_cache: Path
) -> None:
    url, reason = {
        "missing role": (_url(server_dsn, user="nosuchrole"), 'role "nosuchrole" does not exist'),
        "missing database": (
            _url(server_dsn, dbname="nosuchdb"),
            'database "nosuchdb" does not exist',
        ),
    }[case]
    if case == "missing role" and "password" in psycopg.conninfo.conninfo_to_dict(server_dsn):
        # A server that asks for a password (the container) does not say which was wrong.
        reason = 'password authentication failed for user "nosuchrole"'
    line = _refused_at_once(run_cli(["run", "--once"], _quiet_env(url, model_cache)))
    assert "cannot connect to PostgreSQL" in line
    assert reason in line


@pytest.mark.parametrize("case", ["wrong password", "no password"])
def test_run_does_not_wait_for_a_password_that_is_wrong_or_missing(
    case: str, password_server: PasswordServer, model_cache: Path, tmp_path: Path
) -> None:
    if case == "wrong password":
        url = _url(password_server.dsn, user=ROLE, password="not-the-password")
        reason = f'password authentication failed for user "{ROLE}"'
    else:  # and none from a password file either
        url = _url(password_server.dsn, user=ROLE, passfile=str(tmp_path / "no-pgpass"))
        reason = "no password supplied"
    line = _refused_at_once(run_cli(["run", "--once"], _quiet_env(url, model_cache)))
    assert reason in line
    assert "not-the-password" not in line


def test_a_daemon_waiting_out_an_outage_stops_when_the_server_refuses(
    password_server: PasswordServer, model_cache: Path, tmp_path: Path
) -> None:
    """The server is down when the daemon starts (an outage: it retries), and once up
    it says the database does not exist: that answer ends the wait."""
    env = cli_env(_url(password_server.dsn, dbname="nosuchdb"), model_cache)
    log = tmp_path / "daemon.log"
    assert server.stop(password_server.data_dir)
    daemons: list[subprocess.Popen[str]] = []
    try:
        daemons.append(start_daemon(env, log))
        met_the_outage = wait_until(lambda: RETRYING in log.read_text(), 120, 0.1)
        assert server.start(password_server.data_dir) == password_server.dsn
        assert met_the_outage, log.read_text()
        # A generous bound on a hang: the daemon would otherwise retry for 300 s.
        assert wait_until(lambda: daemons[0].poll() is not None, 120, 0.1), log.read_text()
    finally:
        server.start(password_server.data_dir)  # for the module's other tests
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
    text = log.read_text()
    assert daemons[0].returncode == 1, text
    assert "Traceback" not in text
    assert text.count(RETRYING) == 1
    last = text.strip().splitlines()[-1]
    assert last.startswith("indexer: error: cannot connect to PostgreSQL"), text
    assert 'database "nosuchdb" does not exist' in last
