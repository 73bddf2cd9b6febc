"""Section 3: end-to-end backfill by the real Worker, against the raw model.

The same texts are embedded by ``embedder.embed`` alone and by a
:class:`~indexer.worker.Worker` draining them from a table (claim, tokenize, sort,
embed in batches, write back), one after the other in alternating order.  Their ratio
is what the database round trips and the per-claim padding cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.bench.common import median, paired_ratio, quiet, say, timed
from indexer.bench.context import Context
from indexer.bench.scratch import count_state, scratch_schema
from indexer.db import connect as db
from indexer.embedding import plan_calls, shortest_first
from indexer.exceptions import IndexerError
from indexer.settings import Settings


def padded_tokens(lengths: Sequence[int], claim: int, batch: int, token_budget: int) -> int:
    """Tokens the model processes, padding included, when texts are claimed ``claim``
    at a time, sorted by length, and embedded ``batch`` at a time (as the worker does)."""
    total = 0
    for first in range(0, len(lengths), claim):
        block = lengths[first : first + claim]
        ordered = [block[i] for i in shortest_first(block)]
        for start in range(0, len(ordered), batch):
            part = ordered[start : start + batch]
            for call in plan_calls(part, token_budget):
                total += len(call) * max(part[i] for i in call)
    return total


def stage_split(conn: db.Connection) -> dict[str, float]:
    """Where one drain's time went (batches, claim, embed and write ms), from its
    batch_completed events."""
    row = conn.execute(
        "SELECT count(*) AS batches, sum(claim_ms) AS claim, sum(embed_ms) AS embed,"
        " sum(write_ms) AS write FROM events WHERE kind = 'batch_completed'"
    ).fetchone()
    assert row is not None
    return {k: float(v) for k, v in row.items()}


def drain_texts(
    ctx: Context,
    schema: str,
    conn: db.Connection,
    texts: list[str],
    settings: Settings | None = None,
) -> float:
    """Seconds one Worker takes to drain ``texts`` from a fresh table (``--once``).

    The table and the events start empty; the vector cache is left as it is."""
    from indexer.app import DAEMON_CONNECTIONS
    from indexer.store import Store
    from indexer.worker import Worker

    conn.execute("TRUNCATE chunks, events RESTART IDENTITY")
    conn.execute("INSERT INTO chunks (content) SELECT unnest(%s::text[])", (list(texts),))
    settings = dataclasses.replace(settings or ctx.settings, schema=schema)
    with Store(ctx.dsn, schema, pool_size=DAEMON_CONNECTIONS) as store:
        store.queue_status()  # connect and check the schema before the clock starts
        worker = Worker(settings, store, ctx.embedder)
        seconds = timed(lambda: worker.run(once=True))
    if count_state(conn, "embedded") != len(texts):
        raise IndexerError("the worker left rows unembedded")
    return seconds


def bench_backfill(ctx: Context, results: dict[str, Any]) -> None:
    texts = ctx.corpus.backfill
    raw: list[float] = []
    wall: list[float] = []
    stages: list[dict[str, float]] = []
    no_cache = dataclasses.replace(ctx.settings, cache=False)
    with scratch_schema(ctx, "backfill") as (schema, conn), quiet("indexer.worker"):

        def backfill() -> None:
            # With the cache off: this section measures the model path.
            wall.append(drain_texts(ctx, schema, conn, texts, no_cache))
            stages.append(stage_split(conn))

        def raw_all() -> None:
            raw.append(timed(lambda: ctx.embedder.embed(texts)))

        steps = [raw_all, backfill]
        for repeat in range(ctx.plan.repeats):
            for step in steps if repeat % 2 == 0 else reversed(steps):
                step()
            say(f"backfill: run {repeat + 1}/{ctx.plan.repeats} done")
    results["backfill"] = _figures(ctx, texts, raw, wall, stages)


def _figures(
    ctx: Context,
    texts: list[str],
    raw: list[float],
    wall: list[float],
    stages: list[dict[str, float]],
) -> dict[str, Any]:
    embedder = ctx.embedder
    batch = ctx.settings.batch_size
    claim = max(ctx.settings.claim_size, batch)
    lengths = embedder.count_tokens(texts)
    middle = int(np.argsort(wall)[len(wall) // 2])  # the median run's own stage split
    stage = stages[middle]
    wall_s = median(wall)
    return {
        "rows": len(texts),
        "tokens": sum(lengths),
        "batch_size": batch,
        "claim_size": claim,
        "token_budget": ctx.settings.token_budget,
        "seconds": round(wall_s, 3),
        "rows_per_s": round(len(texts) / wall_s, 1),
        "raw_texts_per_s": round(len(texts) / median(raw), 1),
        # Paired: each backfill against the raw run beside it.
        "ratio_to_raw": round(paired_ratio(raw, wall), 3),
        "tokenize_ms": round(timed(lambda: embedder.count_tokens(texts)) * 1000, 1),
        # The worker sorts by length within each claim only, the raw run across all
        # texts: the padding each pays, in tokens through the model.
        "padded_tokens_raw": padded_tokens(
            lengths, len(lengths), len(lengths), embedder.token_budget
        ),
        "padded_tokens_worker": padded_tokens(lengths, claim, batch, embedder.token_budget),
        "outside_model_share": round(1 - stage["embed"] / (wall[middle] * 1000), 4),
        "median_run": {
            "batches": int(stage["batches"]),
            "wall_ms": round(wall[middle] * 1000, 1),
            "claim_ms": round(stage["claim"], 1),
            "embed_ms": round(stage["embed"], 1),
            "write_ms": round(stage["write"], 1),
        },
    }
