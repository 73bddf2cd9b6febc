"""Real `indexer run` subprocesses, for the figures a user of the daemon would see.

The latency and memory sections measure the daemon as it ships (its own process, its
own startup, its own LISTEN connection), not a Worker inside the bench's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.exceptions import IndexerError
from indexer.settings import FIELDS, env_name

if TYPE_CHECKING:
    from indexer.bench.context import Context


def daemon_env(ctx: Context, schema: str, **extra: str) -> dict[str, str]:
    """The bench's own settings, as the environment of an `indexer run` subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXER_")}
    for f in FIELDS:
        value = getattr(ctx.settings, f.name)
        if value is not None:
            env[env_name(f.name)] = str(value)
    env["DATABASE_URL"] = ctx.dsn  # never the embedded server's run lock
    env["INDEXER_SCHEMA"] = schema
    env.update(extra)
    return env


def start_daemon(
    ctx: Context, env: dict[str, str], log: Path, *args: str
) -> subprocess.Popen[bytes]:
    """`indexer run *args`, logging to ``log``; stopped when its scratch schema goes."""
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "indexer.cli", "run", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ctx.children.append(child)
    return child


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """Stop (SIGTERM, then SIGKILL after 30 s) and forget every daemon in ``children``."""
    for child in children:
        _stop(child)
    children.clear()


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    child: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval: float = 0.002,
) -> float:
    """Seconds until ``predicate`` holds; raise (with the daemon's log) if it does not
    within ``timeout`` or the daemon exits first."""
    start = time.perf_counter()
    while not predicate():
        if child is not None and child.poll() is not None:
            tail = log_tail(log) if log else ""
            raise IndexerError(f"the daemon exited ({child.returncode}) {what}:\n{tail}")
        if time.perf_counter() - start > timeout:
            tail = log_tail(log) if log else ""
            raise IndexerError(f"timed out after {timeout:.0f} s {what}\n{tail}")
        time.sleep(interval)
    return time.perf_counter() - start
