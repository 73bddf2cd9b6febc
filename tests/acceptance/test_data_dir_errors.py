"""A data directory where none can be: one line naming the path, exit 1, no traceback.

As root the checks that a directory is writable pass in /proc (root may write there,
only the kernel refuses), so creating the directory itself must fail cleanly too."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import cli_env, run_cli

PSEUDO = ["/proc/self/fd/pgdata", "/proc/pgdata", "/proc/x/pgdata", "/proc/self/status/pgdata"]


def _assert_one_line_error(data_dir: Path | str, model_cache: Path) -> str:
    result = run_cli(["dsn"], cli_env(None, model_cache, INDEXER_DATA_DIR=str(data_dir)))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("indexer: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("path", PSEUDO)
def test_a_data_dir_in_proc(path: str, data_dir: Path, model_cache: Path) -> None:
    line = _assert_one_line_error(path, model_cache)
    assert "INDEXER_DATA_DIR" in line
    assert not Path(path).exists()


def test_a_data_dir_through_a_file(tmp_path: Path, data_dir: Path, model_cache: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "file").write_text("not a directory\n")
    line = _assert_one_line_error(tmp_path / "file" / "pgdata", model_cache)
    assert f"{tmp_path / 'file'} exists and is not a directory" in line


@contextlib.contextmanager
def _read_only_mount(path: Path) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only filesystem here (needs root and mount rights)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only filesystem needs root")
def test_a_data_dir_on_a_read_only_filesystem(
    tmp_path: Path, data_dir: Path, model_cache: Path
) -> None:
    tmp_path.chmod(0o755)
    with _read_only_mount(tmp_path / "ro") as ro:
        line = _assert_one_line_error(ro / "pgdata", model_cache)
        assert str(ro) in line and "INDEXER_DATA_DIR" in line
        line = _assert_one_line_error(ro / "deeper" / "pgdata", model_cache)
        assert str(ro / "deeper") in line
