"""Section 6: peak RSS of `indexer run --once` draining rows of 1 MB of text each.

The daemon reads ``max_chars`` of each row and embeds in model calls bounded by the
token budget, so its memory should not grow with the rows' size; a separate process
is measured, as a user would run it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from indexer.bench.common import ONE_MB, median, say
from indexer.bench.context import Context
from indexer.bench.corpus import big_texts
from indexer.bench.daemons import daemon_env, log_tail, start_daemon
from indexer.bench.scratch import count_state, scratch_schema
from indexer.exceptions import IndexerError

MIB = 2**20


def _vm_hwm_bytes(pid: int) -> int:
    """The kernel's high-water mark of the process's RSS (catches what sampling misses)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def drain_once(
    ctx: Context, env: dict[str, str], log: Path, psutil: Any = None
) -> tuple[int, float]:
    """`indexer run --once` until it exits: its peak RSS in bytes (sampled every 50 ms,
    and the kernel's high-water mark, which catches what sampling misses) and seconds."""
    start = time.perf_counter()
    child = start_daemon(ctx, env, log, "--once", "--no-progress")
    peak = 0
    while child.poll() is None:
        peak = max(peak, _vm_hwm_bytes(child.pid))
        if psutil is not None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, psutil.Process(child.pid).memory_info().rss)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise IndexerError(f"`indexer run --once` failed:\n{log_tail(log)}")
    return peak, seconds


def bench_memory(ctx: Context, results: dict[str, Any]) -> None:
    try:
        import psutil
    except ImportError:
        results["memory"] = {"skipped": "psutil is not installed (pip install psutil)"}
        return
    count = ctx.plan.memory_rows
    peaks: list[float] = []
    drains: list[float] = []
    log = ctx.workdir / "memory-daemon.log"
    texts = big_texts(count)
    with scratch_schema(ctx, "memory") as (schema, conn):
        env = daemon_env(ctx, schema)
        for repeat in range(ctx.plan.memory_runs):
            conn.execute("TRUNCATE chunks, events RESTART IDENTITY")
            for text in texts:
                conn.execute("INSERT INTO chunks (content) VALUES (%s)", (text,))
            peak, seconds = drain_once(ctx, env, log, psutil)
            drains.append(seconds)
            if count_state(conn, "embedded") != count:
                raise IndexerError("`indexer run --once` left rows unembedded")
            peaks.append(peak / MIB)
            say(f"memory: run {repeat + 1}/{ctx.plan.memory_runs}: peak {peak / MIB:.0f} MiB")
    results["memory"] = {
        "rows": count,
        "row_chars": ONE_MB,
        "max_chars": ctx.settings.max_chars,
        "batch_size": ctx.settings.batch_size,
        "token_budget": ctx.settings.token_budget,
        "peak_rss_mib": round(median(peaks), 1),
        "max_peak_rss_mib": round(max(peaks), 1),
        "process_s": round(median(drains), 2),
    }
