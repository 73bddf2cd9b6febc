"""Where the embedded server's data directory and run lock may be: nothing another local
user planted (a symlink, a directory they own or can write) is followed, opened up or
written.  Most checks need no server: `server.run_lock` runs them first.

The tests that need a second account (a file or link owned by someone else) run as root
only, with the `pgserver` account root-started servers use; the others also pass as an
ordinary user (run this file as one to check the non-root path)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from indexer.db import server
from indexer.exceptions import DataDirError

from ..helpers import cli_env, run_cli

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root, to make files owned by another user"
)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    # tmp_path's own parents belong to this user and are 0700: a safe place to start.
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
def other_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("pgserver")
    except KeyError:
        pytest.skip("no pgserver account (a root-started embedded server creates it)")


def _one_line(exc: pytest.ExceptionInfo[DataDirError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_symlink_as_the_run_lock_is_refused_and_its_target_untouched(
    base: Path, model_cache: Path
) -> None:
    victim = base / "precious"
    victim.write_text("keep me\n")
    data_dir = base / "pgdata"
    (base / ".pgdata.indexer-run.lock").symlink_to(victim)

    with pytest.raises(DataDirError) as err, server.run_lock(data_dir):
        pass
    assert "not a regular file owned by" in _one_line(err)
    assert victim.read_text() == "keep me\n"

    env = cli_env(None, model_cache, INDEXER_DATA_DIR=str(data_dir))
    result = run_cli(["run", "--once"], env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("indexer: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert victim.read_text() == "keep me\n"


def test_a_dangling_symlink_as_the_run_lock_creates_nothing(base: Path) -> None:
    target = base / "would-be-created"
    (base / ".pgdata.indexer-run.lock").symlink_to(target)
    with pytest.raises(DataDirError), server.run_lock(base / "pgdata"):
        pass
    assert not target.exists()


@needs_root
def test_a_run_lock_owned_by_another_user_is_refused_and_left_as_it_is(
    base: Path, other_user: pwd.struct_passwd
) -> None:
    lock = base / ".pgdata.indexer-run.lock"
    lock.write_text("theirs")
    os.chown(lock, other_user.pw_uid, other_user.pw_gid)
    with pytest.raises(DataDirError) as err, server.run_lock(base / "pgdata"):
        pass
    assert str(lock) in _one_line(err)
    assert lock.read_text() == "theirs"


def test_a_run_lock_of_ours_is_reused(base: Path) -> None:
    data_dir = base / "pgdata"
    for _ in range(2):
        with server.run_lock(data_dir):
            lock = base / ".pgdata.indexer-run.lock"
            assert lock.read_text() == str(os.getpid())


def test_a_symlinked_data_dir_is_refused_and_its_target_untouched(
    base: Path, model_cache: Path
) -> None:
    private = base / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    link = base / "pgdata"
    link.symlink_to(private)
    before = os.stat(private)
    try:
        with pytest.raises(DataDirError) as err:
            server.start(link)
        assert "is a symlink" in _one_line(err)
        env = cli_env(None, model_cache, INDEXER_DATA_DIR=str(link))
        result = run_cli(["dsn"], env, timeout=60)
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1
        assert "is a symlink" in result.stderr
    finally:
        server.stop(private)  # only if a server was started in it after all
    after = os.stat(private)
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        before.st_mode,
        before.st_uid,
        before.st_gid,
    )
    assert not (private / "PG_VERSION").exists()


def test_a_parent_writable_by_others_is_refused(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(DataDirError) as err, server.run_lock(shared / "pgdata"):
        pass
    assert f"{shared} is writable by other users" in _one_line(err)
    assert not (shared / ".pgdata.indexer-run.lock").exists()


def test_a_sticky_parent_writable_by_all_is_accepted(base: Path) -> None:
    sticky = base / "sticky"  # like /tmp
    sticky.mkdir()
    sticky.chmod(0o1777)
    with server.run_lock(sticky / "pgdata"):
        pass


def test_missing_parents_are_created(base: Path) -> None:
    with server.run_lock(base / "a" / "b" / "pgdata"):
        assert (base / "a" / "b").is_dir()


@needs_root
@pytest.mark.parametrize("how", ["owner", "group"])
def test_a_parent_another_user_controls_is_refused(
    base: Path, other_user: pwd.struct_passwd, how: str
) -> None:
    theirs = base / "theirs"
    theirs.mkdir()
    if how == "owner":
        os.chown(theirs, other_user.pw_uid, other_user.pw_gid)
        theirs.chmod(0o755)
        expected = f"{theirs} belongs to {other_user.pw_name}"
    else:
        os.chown(theirs, 0, other_user.pw_gid)  # their group may write
        theirs.chmod(0o775)
        expected = f"{theirs} is writable by other users"
    with pytest.raises(DataDirError) as err, server.run_lock(theirs / "pgdata"):
        pass
    assert expected in _one_line(err)


@needs_root
def test_a_symlink_component_is_followed_only_if_it_is_roots_or_ours(
    base: Path, other_user: pwd.struct_passwd
) -> None:
    real = base / "real"
    real.mkdir()
    ours = base / "ours"
    ours.symlink_to(real)
    with server.run_lock(ours / "pgdata"):
        assert (real / ".pgdata.indexer-run.lock").exists()

    theirs = base / "theirs"
    theirs.symlink_to(real)
    os.lchown(theirs, other_user.pw_uid, other_user.pw_gid)
    with pytest.raises(DataDirError) as err, server.run_lock(theirs / "pgdata"):
        pass
    assert f"{theirs} is a symlink owned by {other_user.pw_name}" in _one_line(err)


def test_a_data_dir_that_is_a_file_is_refused(base: Path) -> None:
    file = base / "pgdata"
    file.write_text("")
    with pytest.raises(DataDirError) as err, server.run_lock(file):
        pass
    assert "is not a directory" in _one_line(err)


def test_the_data_dir_mode_is_not_loosened_by_the_checks(base: Path) -> None:
    data_dir = base / "pgdata"
    data_dir.mkdir(mode=0o700)
    with server.run_lock(data_dir):
        pass
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
