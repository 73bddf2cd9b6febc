"""Section 8: the vector cache: what reuse saves, and what it costs when nothing repeats.

All drains are the real :class:`~indexer.worker.Worker` on the backfill corpus, in one
scratch schema, alternating the compared runs:

- re-ingest: a first ingest (empty cache) against deleting every row and inserting
  the same texts again (every vector cached);
- duplicates: each of half the texts twice, shuffled, against as many distinct texts
  (empty cache for both);
- no repeats: distinct texts with the cache on against the cache off (empty cache);
- INSERT of a cached text -> vector committed, on an idle ``indexer run``;
- the claim's cost with 1k and with 1M (``--quick``: 20k) cached vectors, all of its
  rows cache hits, and the cache's disk size per million vectors.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from typing import Any

import numpy as np

from indexer.bench.backfill import drain_texts, stage_split
from indexer.bench.common import DIM, SEED, median, paired_ratio, percentile, quiet, say
from indexer.bench.context import Context
from indexer.bench.daemons import daemon_env, start_daemon, wait_for
from indexer.bench.scratch import one, scratch_schema
from indexer.db import connect as db

#: Claims timed at each cache size (after as many unmeasured ones).
CLAIMS = 30


def bench_cache(ctx: Context, results: dict[str, Any]) -> None:
    texts = ctx.corpus.backfill
    rng = random.Random(SEED)
    half = texts[: len(texts) // 2]
    duplicated = half + half
    rng.shuffle(duplicated)
    runs: dict[str, list[float]] = {k: [] for k in ("first", "again", "dup", "unique", "off")}
    stages: dict[str, list[dict[str, float]]] = {}
    on = ctx.settings
    off = dataclasses.replace(on, cache=False)
    with scratch_schema(ctx, "cache") as (schema, conn), quiet("indexer.worker"):

        def timed_drain(name: str, corpus: list[str], settings: Any, clear: bool) -> None:
            if clear:
                conn.execute("TRUNCATE vector_cache")
            runs[name].append(drain_texts(ctx, schema, conn, corpus, settings))
            stages.setdefault(name, []).append(stage_split(conn))

        for repeat in range(ctx.plan.repeats):
            timed_drain("first", texts, on, clear=True)
            timed_drain("again", texts, on, clear=False)
            pair = [("dup", duplicated), ("unique", texts[: len(duplicated)])]
            for name, corpus in pair if repeat % 2 == 0 else reversed(pair):
                timed_drain(name, corpus, on, clear=True)
            pair = [("unique", texts), ("off", texts)]
            for name, corpus in pair if repeat % 2 == 0 else reversed(pair):
                timed_drain(name, corpus, on if name == "unique" else off, clear=True)
            say(f"cache: run {repeat + 1}/{ctx.plan.repeats} done")
        latency = _cached_insert_latency(ctx, schema, conn, texts)
        lookup = _lookup_scaling(ctx, schema, conn)
    # "unique" ran twice per repeat: against "dup" (first) and against "off" (second).
    unique_vs_dup = runs["unique"][0::2]
    unique_vs_off = runs["unique"][1::2]
    rows = len(texts)
    on_db = median([st["claim"] + st["write"] for st in stages["unique"][1::2]])
    off_db = median([st["claim"] + st["write"] for st in stages["off"]])
    model = median([st["embed"] for st in stages["unique"][1::2] + stages["off"]])
    results["cache"] = {
        "rows": rows,
        "first_ingest_rows_per_s": round(rows / median(runs["first"]), 1),
        "reingest_rows_per_s": round(rows / median(runs["again"]), 1),
        # Ratios of seconds, run by run: the slower run's over the faster one's.
        "reingest_speedup": round(paired_ratio(runs["first"], runs["again"]), 2),
        "duplicates_speedup": round(paired_ratio(unique_vs_dup, runs["dup"]), 3),
        # Rows/s with the cache on over rows/s with it off.
        "no_repeat_ratio": round(paired_ratio(runs["off"], unique_vs_off), 4),
        # The same, from the daemon's own timings: the model's time is the same code
        # either way, so the cache's cost is in the claim and the write.  Less sensitive
        # to other load on the machine than the wall clock.
        "no_repeat_db_ms": {"cache_on": round(on_db, 1), "cache_off": round(off_db, 1)},
        "no_repeat_ratio_from_stages": round((model + off_db) / (model + on_db), 4),
        "runs_s": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
        "insert_cached": latency,
        **lookup,
    }


def _cached_insert_latency(
    ctx: Context, schema: str, conn: db.Connection, texts: list[str]
) -> dict[str, Any]:
    """INSERT of an already-cached text -> vector committed, idle daemon (NOTIFY)."""
    conn.execute("TRUNCATE chunks, events RESTART IDENTITY")
    log = ctx.workdir / "cache-daemon.log"
    child = start_daemon(ctx, daemon_env(ctx, schema, INDEXER_POLL_INTERVAL="3600"), log)
    samples = ctx.plan.latency_samples
    chosen = texts[:samples]

    def wait(predicate: Any, what: str) -> float:
        return wait_for(predicate, 120, what, child=child, log=log, interval=0.001)

    def insert_and_wait(text: str) -> float:
        row = conn.execute(
            "INSERT INTO chunks (content) VALUES (%s) RETURNING id", (text,)
        ).fetchone()
        assert row is not None
        query = "SELECT state = 'embedded' FROM chunks WHERE id = %s"
        return wait(lambda: bool(one(conn, query, (row["id"],))), f"row {row['id']}")

    wait(lambda: bool(one(conn, "SELECT count(*) FROM events")), "the daemon's start")
    for text in chosen:  # fill the cache (and warm the daemon)
        insert_and_wait(text)
    conn.execute("DELETE FROM chunks")
    rng = random.Random(SEED)
    latencies = []
    for text in chosen:
        time.sleep(rng.uniform(0.1, 0.3))  # the daemon is back in its wait
        latencies.append(insert_and_wait(text) * 1000)
    child.terminate()
    child.wait(30)
    reused = one(
        conn, "SELECT coalesce(sum(reused_count), 0) FROM events WHERE kind = 'batch_completed'"
    )
    return {
        "samples": samples,
        "reused_rows": int(reused),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
    }


def _fill(conn: db.Connection, model: str, first: int, last: int) -> None:
    """Cache entries ``first``..``last`` under ``model``: distinct hashes, one vector."""
    vector = np.full(DIM, 1 / np.sqrt(DIM), dtype=np.float32)
    step = 200_000
    for start in range(first, last + 1, step):
        end = min(last, start + step - 1)
        conn.execute(
            "INSERT INTO vector_cache (model, hash, embedding)"
            " SELECT %s, sha256(int8send(g)), %s FROM generate_series(%s::bigint, %s::bigint) g",
            (model, vector, start, end),
        )


def _claim_ms(ctx: Context, conn: db.Connection, schema: str, key: str) -> float:
    """Median ms of claims of claim_size rows, every row a cache hit."""
    from indexer.store import Store

    size = ctx.settings.claim_size
    conn.execute("TRUNCATE chunks")
    # Row texts whose sha256 the cache holds: the hits must be real index probes.
    conn.execute(
        "INSERT INTO chunks (content) SELECT 'cached ' || g FROM generate_series(1, %s) g",
        (size,),
    )
    conn.execute(
        "INSERT INTO vector_cache (model, hash, embedding)"
        " SELECT %s, sha256(convert_to(content, 'UTF8')), %s FROM chunks"
        " ON CONFLICT DO NOTHING",
        (key, np.full(DIM, 1 / np.sqrt(DIM), dtype=np.float32)),
    )
    conn.execute("ANALYZE vector_cache")
    times = []
    worker = uuid.uuid4()
    with Store(ctx.dsn, schema) as store:
        for i in range(2 * CLAIMS):
            start = time.perf_counter()
            rows = store.claim(worker, size, 60, ctx.settings.max_chars, key)
            elapsed = (time.perf_counter() - start) * 1000
            if sum(r.cached is not None for r in rows) != size:
                raise RuntimeError("the claim did not find its rows' cached vectors")
            store.release(worker, [r.id for r in rows])
            if i >= CLAIMS:
                times.append(elapsed)
    return median(times)


def _lookup_scaling(ctx: Context, schema: str, conn: db.Connection) -> dict[str, Any]:
    key = ctx.embedder.cache_key
    small, large = 1_000, 20_000 if ctx.plan.quick else 1_000_000
    conn.execute("TRUNCATE vector_cache")
    _fill(conn, key, 1, small)
    small_ms = _claim_ms(ctx, conn, schema, key)
    say(f"cache: filling {large:,} cached vectors ...")
    _fill(conn, key, small + 1, large)
    conn.execute("VACUUM ANALYZE vector_cache")
    entries = int(one(conn, "SELECT count(*) FROM vector_cache"))
    size = int(one(conn, "SELECT pg_total_relation_size('vector_cache'::regclass)"))
    large_ms = _claim_ms(ctx, conn, schema, key)
    return {
        "claim_size": ctx.settings.claim_size,
        "lookup_small_entries": small,
        "lookup_large_entries": entries,
        "claim_hits_small_ms": round(small_ms, 2),
        "claim_hits_large_ms": round(large_ms, 2),
        "lookup_ratio": round(large_ms / small_ms, 2),
        "disk_gb_per_million": round(size / entries * 1e6 / 1e9, 2),
    }
