"""Helpers shared by tests: running the real `indexer` command, waiting for rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

INDEXER = [sys.executable, "-m", "indexer.cli"]
#: The same command with the test hooks of indexer.testing (INDEXER_TEST_FAIL_MARKER).
INDEXER_WITH_HOOKS = [sys.executable, "-m", "indexer.testing"]


def _command(env: dict[str, str]) -> list[str]:
    return INDEXER_WITH_HOOKS if "INDEXER_TEST_FAIL_MARKER" in env else INDEXER


# Five unrelated sentences: a query about one of them must find it first.
CORPUS = {
    "db": "PostgreSQL is an open source relational database with strong SQL support.",
    "cat": "Cats are small furry animals that like to sleep in the sun.",
    "stocks": "The stock market fell sharply today as investors worried about inflation.",
    "rain": "Heavy rain is expected across the region tomorrow afternoon.",
    "python": "Python is a programming language that is popular for data science.",
}


def cli_env(database: str | None, model_cache: Path, **extra: str) -> dict[str, str]:
    """Environment for running the real `indexer` command in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXER_")}
    env.pop("DATABASE_URL", None)
    if database:
        env["DATABASE_URL"] = database
    env["INDEXER_MODEL_CACHE"] = str(model_cache)
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(env), *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def start_daemon(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[str]:
    """`indexer run` in the background, its output appended to ``log``.

    A file, not a pipe: nobody reads a pipe while the test runs, and a full pipe
    would block the daemon.
    """
    with open(log, "a") as out:
        return subprocess.Popen(
            [*_command(env), "run", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
