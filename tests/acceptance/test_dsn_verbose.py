"""Which database a command uses: `indexer dsn` says on stderr when it has just created a
new embedded database (a second terminal without the same INDEXER_DATA_DIR would get one),
`dsn --verbose` says which data directory, server and schema it is, and the daemon's first
log line names its database.  stdout stays the DSN alone."""

from __future__ import annotations

import os
from pathlib import Path

from indexer.db import server

from ..conftest import TMP
from ..helpers import cli_env, run_cli

NOTICE = "created a new embedded database in"


def test_dsn_on_a_new_data_dir_says_so_on_stderr_only(data_dir: Path, model_cache: Path) -> None:
    base = TMP / f"dsn-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # as root, the server runs as its own user and must reach it
    new = base / "pgdata"
    env = cli_env(None, model_cache, INDEXER_DATA_DIR=str(new))
    try:
        first = run_cli(["dsn"], env, timeout=180)
        assert first.returncode == 0, first.stderr
        dsn = first.stdout.strip()
        assert first.stdout == dsn + "\n" and dsn.endswith(f"/indexer?host={new}")
        notices = [line for line in first.stderr.splitlines() if NOTICE in line]
        assert len(notices) == 1, first.stderr
        assert f"{NOTICE} {new};" in notices[0] and f"INDEXER_DATA_DIR={new}" in notices[0]

        again = run_cli(["dsn", "--verbose"], env, timeout=60)
        assert again.returncode == 0, again.stderr
        assert again.stdout == dsn + "\n"  # `$(indexer dsn -v)` is still the DSN
        assert NOTICE not in again.stderr
        details = _details(again.stderr)
        pid = (new / "postmaster.pid").read_text().split()[0]
        assert details["data directory"] == f"{new} (existing)"
        assert details["server pid"] == pid
        assert details["database"] == "'indexer' of the embedded PostgreSQL"
        assert details["schema"] == "'public' has no indexer tables yet: run `indexer migrate`"

        migrated = run_cli(["migrate"], env, timeout=120)
        assert migrated.returncode == 0, migrated.stderr
        after = run_cli(["dsn", "-v"], env, timeout=60)
        assert _details(after.stderr)["schema"].startswith("'public' migrated (revision "), (
            after.stderr
        )

        daemon = run_cli(["run", "--once"], env, timeout=180)
        assert daemon.returncode == 0, daemon.stderr
        assert (
            f"INFO indexer: using database {dsn} (the embedded PostgreSQL in {new})"
            in daemon.stderr
        )
    finally:
        server.stop(new)


def test_dsn_verbose_with_a_database_url(database: str, model_cache: Path) -> None:
    result = run_cli(["dsn", "--verbose"], cli_env(database, model_cache), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == database + "\n"
    details = _details(result.stderr)
    assert details["database"] == f"{database} (DATABASE_URL; no embedded server)"
    assert details["schema"].startswith("'public' migrated (revision "), result.stderr
    assert "data directory" not in result.stderr


def test_dsn_verbose_hides_the_password(model_cache: Path) -> None:
    url = "postgresql://app:secret@127.0.0.1:9/app?connect_timeout=2"
    result = run_cli(["dsn", "-v"], cli_env(url, model_cache), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == url + "\n"  # stdout: the DSN as given, for scripts
    assert "secret" not in result.stderr
    details = _details(result.stderr)
    assert details["schema"].startswith("'public': cannot check (cannot connect"), details


KEYS = ("database", "data directory", "server pid", "schema")


def _details(stderr: str) -> dict[str, str]:
    """The `--verbose` table: a key padded to 16 columns, then its value."""
    rows = {}
    for line in stderr.splitlines():
        key = line[:16].strip()
        if key in KEYS and line[16:17] != " " and line[:16].endswith(" "):
            rows[key] = line[16:]
    return rows


def test_the_daemon_names_its_database_without_the_password(model_cache: Path) -> None:
    url = "postgresql://app:secret@127.0.0.1:9/app?connect_timeout=1"
    env = cli_env(url, model_cache, INDEXER_DB_DOWN_TIMEOUT="0.5")
    result = run_cli(["run", "--once"], env, timeout=120)
    assert result.returncode == 1  # nobody listens there
    assert "INFO indexer: using database postgresql://app:***@127.0.0.1:9/app" in result.stderr
    assert "(DATABASE_URL), schema 'public'" in result.stderr
    assert "secret" not in result.stderr
