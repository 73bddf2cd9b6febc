"""The embedded PostgreSQL as a new user meets it: several commands started at once on a
fresh data directory (the tour runs `make run` in one terminal and `indexer dsn` in
another)."""

from __future__ import annotations

import concurrent.futures
import os
import pwd
import stat
import subprocess
from pathlib import Path

import psycopg
import pytest

from indexer.db import server

from ..conftest import TMP
from ..helpers import INDEXER, cli_env


def test_concurrent_commands_on_a_fresh_data_dir_all_succeed(model_cache: Path) -> None:
    base = TMP / f"race-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # as root, the server runs as its own user and must reach it
    data_dir = base / "pgdata"
    env = cli_env(None, model_cache, INDEXER_DATA_DIR=str(data_dir))
    commands = [["dsn"], ["migrate"], ["dsn"], ["migrate"], ["dsn"], ["dsn"]]

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*INDEXER, *args], env=env, capture_output=True, text=True, timeout=180, check=False
        )

    try:
        with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
            results = list(pool.map(run, commands))
        for args, result in zip(commands, results, strict=True):
            assert result.returncode == 0, (args, result.stderr)
            assert "Traceback" not in result.stderr, (args, result.stderr)
        dsns = {r.stdout.strip() for a, r in zip(commands, results, strict=True) if a == ["dsn"]}
        assert len(dsns) == 1 and dsns.pop().endswith(f"/indexer?host={data_dir}")
    finally:
        server.stop(data_dir)


def _status_ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


@pytest.mark.skipif(os.geteuid() != 0, reason="the server drops privileges only when root")
def test_a_root_started_server_has_no_root_user_or_group(tmp_path: Path) -> None:
    account = None
    # A private parent (0700): the server's user needs its search bit, nothing more.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    tmp_path.chmod(0o700)
    data_dir = private / "pgdata"
    secret = tmp_path / "secret"  # root:root 0640, which the pgserver user cannot read
    secret.write_text("root only\n")
    secret.chmod(0o640)
    try:
        dsn = server.start(data_dir)
        account = pwd.getpwnam("pgserver")
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        ids = _status_ids(pid)
        assert ids["Uid"] == [account.pw_uid] * 4
        assert ids["Gid"] == [account.pw_gid] * 4
        assert set(ids["Groups"]) <= {account.pw_gid}
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("SELECT pg_read_file(%s)", (str(secret),))
    finally:
        server.stop(data_dir)
    # Only the search bit for others, on the parents that lacked it.
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o701
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o701
    st = os.stat(data_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert account is not None and st.st_uid == account.pw_uid
