"""Section 7: the cost of one claim with few and with many already-embedded rows.

The queue's partial index covers only rows still to do (pending or claimed), so a
claim should cost the same beside 1,000 embedded rows as beside 1,000,000.  Claims on
the two tables alternate; each is released at once so the next claim finds the same
rows.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import numpy as np

from indexer.bench.common import DIM, median, percentile, say
from indexer.bench.context import Context
from indexer.bench.scratch import count_state, scratch_schema
from indexer.db import connect as db
from indexer.exceptions import IndexerError

#: Claims made before the measured ones: plans cached, buffers warm.
WARM_UP_CLAIMS = 10


def _load_embedded(conn: db.Connection, rows: int) -> None:
    """``rows`` already-embedded rows, fast: no HNSW index, one constant vector."""
    conn.execute("DROP INDEX IF EXISTS chunks_embedding_idx")
    vector = np.full(DIM, 1 / np.sqrt(DIM), dtype=np.float32)
    step = 200_000
    for first in range(1, rows + 1, step):
        last = min(rows, first + step - 1)
        conn.execute(
            "INSERT INTO chunks (content, embedding)"
            " SELECT 'embedded row ' || g, %s FROM generate_series(%s::bigint, %s::bigint) g",
            (vector, first, last),
        )


def _fill(conn: db.Connection, schema: str, rows: int, pending: int) -> float:
    """Seconds to load ``rows`` embedded rows and ``pending`` rows to claim."""
    start = time.perf_counter()
    _load_embedded(conn, rows)
    conn.execute(
        "INSERT INTO chunks (content) SELECT 'pending row ' || g FROM generate_series(1, %s) g",
        (pending,),
    )
    conn.execute("VACUUM ANALYZE chunks")
    seconds = time.perf_counter() - start
    if count_state(conn, "embedded") != rows or count_state(conn, "pending") != pending:
        raise IndexerError(f"the claim table {schema} does not hold what was loaded")
    return seconds


def bench_claim(ctx: Context, results: dict[str, Any]) -> None:
    from indexer.store import Store

    claim = max(ctx.settings.claim_size, ctx.settings.batch_size)
    sizes = {"small": ctx.plan.claim_small, "large": ctx.plan.claim_large}
    times: dict[str, list[float]] = {"small": [], "large": []}
    release: dict[str, list[float]] = {"small": [], "large": []}
    load_s: dict[str, float] = {}
    worker = uuid.uuid4()
    with contextlib.ExitStack() as stack:
        stores: dict[str, Store] = {}
        for name, rows in sizes.items():
            schema, conn = stack.enter_context(scratch_schema(ctx, f"claim_{name}"))
            say(f"claim: loading {rows} embedded rows")
            load_s[name] = round(_fill(conn, schema, rows, claim), 1)
            stores[name] = stack.enter_context(Store(ctx.dsn, schema))

        def cycle(name: str, record: bool) -> None:
            store = stores[name]
            t0 = time.perf_counter()
            claimed = store.claim(worker, claim, ctx.settings.lease_seconds, ctx.settings.max_chars)
            t1 = time.perf_counter()
            store.release(worker, [r.id for r in claimed])
            t2 = time.perf_counter()
            if len(claimed) != claim:
                raise IndexerError(f"claimed {len(claimed)} rows, expected {claim}")
            if record:
                times[name].append((t1 - t0) * 1000)
                release[name].append((t2 - t1) * 1000)

        for i in range(WARM_UP_CLAIMS + ctx.plan.claims):
            for name in ("small", "large") if i % 2 == 0 else ("large", "small"):
                cycle(name, record=i >= WARM_UP_CLAIMS)
    small, large = median(times["small"]), median(times["large"])
    results["claim"] = {
        "claims": ctx.plan.claims,
        "claim_size": claim,
        "pending_rows": claim,
        "small_rows": sizes["small"],
        "large_rows": sizes["large"],
        "small_ms": round(small, 3),
        "large_ms": round(large, 3),
        "small_p95_ms": round(percentile(times["small"], 95), 3),
        "large_p95_ms": round(percentile(times["large"], 95), 3),
        "release_small_ms": round(median(release["small"]), 3),
        "release_large_ms": round(median(release["large"]), 3),
        "ratio": round(large / small, 2),
        "load_s": load_s,
    }
