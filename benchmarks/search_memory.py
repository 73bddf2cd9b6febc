"""The daemon's memory while it answers large document searches: RSS before, at the peak
of, and after rounds of concurrent ``POST /search`` requests.

    python benchmarks/search_memory.py [--documents 100] [--chars 1000000] [--clients 8]
        [--rounds 3] [--k 1000] [--passages 20] [--code DIR] [--data-dir DIR] [--reuse]

It starts the embedded PostgreSQL in a scratch data directory (``--data-dir``, by default
``.tmp/search_memory``, emptied first), migrates it, inserts ``--documents`` documents of
``--chars`` random lowercase letters without a space into the built-in ``documents``
table, then runs ``indexer run --http`` as a child process (from ``--code``, another
checkout of the project, if given: its ``indexer`` package is imported instead of this
one) and waits until every document is indexed.  Then, ``--rounds`` times, ``--clients``
threads each send one ``{"group": "document", "k": ..., "passages": ...}`` search at
once, while the daemon's RSS (``VmRSS`` of ``/proc/PID/status``) is sampled every 10 ms;
after each round the script waits 5 seconds and reads the RSS again.  It prints the
chunks the documents became, each answer's status and size, and the RSS figures.
``--reuse`` serves the data directory as a previous run left it (indexed, perhaps by
another checkout's daemon) instead of starting afresh.

A measurement for people, not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import random
import shutil
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg

from indexer.db import migrate, server

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """The highest RSS of ``pid`` seen while running (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self._stop.wait(0.01)

    def __enter__(self) -> Sampler:
        self.peak = rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def insert_documents(dsn: str, count: int, chars: int) -> None:
    rng = random.Random(1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            text = "".join(rng.choices(string.ascii_lowercase, k=chars))
            conn.execute("INSERT INTO documents (content) VALUES (%s)", (text,))


def wait_indexed(dsn: str, count: int, daemon: subprocess.Popen[bytes]) -> float:
    began = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'indexed') AS done,"
                " count(*) FILTER (WHERE state = 'failed') AS failed FROM source_documents"
            ).fetchone()
            assert row is not None
            if row[0] + row[1] >= count:
                return time.monotonic() - began
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited ({daemon.returncode})")
            time.sleep(1)


def wait_http(url: str, daemon: subprocess.Popen[bytes]) -> None:
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.returncode})")
        time.sleep(0.5)


def describe_chunks(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), max(length(content)), sum(length(content))"
            " FROM chunks WHERE document_id IS NOT NULL"
        ).fetchone()
    assert row is not None
    return f"{row[0]} chunks, the longest {row[1]:,} characters, {row[2]:,} in all"


def search_round(url: str, clients: int, body: dict[str, Any]) -> list[str]:
    def one(_: int) -> str:
        began = time.monotonic()
        response = httpx.post(url + "/search", json=body, timeout=300)
        seconds = time.monotonic() - began
        if response.status_code != 200:
            return f"{response.status_code} in {seconds:.1f} s: {response.text[:120]}"
        found = response.json()
        cut = ", truncated" if found.get("truncated") else ""
        return (
            f"200 in {seconds:.1f} s: {len(response.content) / MIB:.1f} MiB, "
            f"{len(found['results'])} documents{cut}"
        )

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--chars", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--passages", type=int, default=20)
    parser.add_argument("--code", type=Path, help="run the daemon from this checkout")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".tmp" / "search_memory")
    parser.add_argument("--reuse", action="store_true", help="keep the data directory's documents")
    args = parser.parse_args(argv)

    if not args.reuse:
        shutil.rmtree(args.data_dir, ignore_errors=True)
    dsn = server.start(args.data_dir)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        if not args.reuse:
            migrate.upgrade(dsn, "public")
            insert_documents(dsn, args.documents, args.chars)
        port = free_port()
        env = dict(
            os.environ,
            DATABASE_URL=dsn,
            INDEXER_MODEL_CACHE=str(ROOT / ".tmp" / "models"),
            INDEXER_LOG_LEVEL="WARNING",
        )
        code = ROOT
        if args.code is not None:  # its package first (python -m puts the folder first)
            code = args.code.resolve()
            env["PYTHONPATH"] = str(code)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "indexer.cli", "run", "--no-progress"],
            env={**env, "INDEXER_HTTP": f"127.0.0.1:{port}"},
            cwd=code,
        )
        seconds = wait_indexed(dsn, args.documents, daemon)
        print(f"indexed {args.documents} documents in {seconds:.0f} s: {describe_chunks(dsn)}")
        url = f"http://127.0.0.1:{port}"
        wait_http(url, daemon)
        body = {
            "query": "which document?",
            "group": "document",
            "k": args.k,
            "passages": args.passages,
        }
        print(f"RSS idle: {rss(daemon.pid) / MIB:.0f} MiB")
        for number in range(1, args.rounds + 1):
            with Sampler(daemon.pid) as sampler:
                answers = search_round(url, args.clients, body)
            time.sleep(5)
            print(
                f"round {number}: RSS peak {sampler.peak / MIB:.0f} MiB, "
                f"5 s after {rss(daemon.pid) / MIB:.0f} MiB"
            )
            for answer in sorted(set(answers)):
                print(f"  {answers.count(answer)} x {answer}")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(60)
        server.stop(args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
