"""Section 5: search latency (query embedding + HNSW top-10) and recall@10.

The table holds real embeddings of standard-library text, each copied a few times with
gaussian noise: enough distinct vectors for a realistic graph without embedding 100k
texts.  Recall is judged against exact top-10 computed in numpy, which is itself
checked against PostgreSQL's sequential scan for a few queries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg import sql

from indexer.bench.common import SEED, TOP_K, Floats, normalise, percentile, say, timed
from indexer.bench.context import Context
from indexer.bench.corpus import search_lines
from indexer.bench.scratch import count_state, one, scratch_schema
from indexer.db import connect as db
from indexer.exceptions import IndexerError

#: Gaussian noise (per dimension) added to real embeddings to make the search corpus;
#: a perturbed vector keeps a cosine of about 0.89 with the one it came from.
NOISE_SIGMA = 0.025
#: The ef_search values of the recall curve.
EF_SEARCH_CURVE = (40, 100, 200, 400)
NEAREST_SQL = "SELECT id FROM chunks ORDER BY embedding <=> %s LIMIT %s"


def search_vectors(base: Floats, rows: int) -> Floats:
    """``rows`` vectors: real embeddings, cycled, each with its own gaussian noise."""
    rng = np.random.default_rng(SEED)
    out = np.empty((rows, base.shape[1]), dtype=np.float32)
    step = 10_000
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        chosen = base[np.arange(start, stop) % len(base)]
        noise = rng.standard_normal(chosen.shape, dtype=np.float32) * NOISE_SIGMA
        out[start:stop] = normalise(chosen + noise)
    return out


def _exact_top(vectors: Floats, query: Floats) -> set[int]:
    """Row ids (1-based, as loaded) of the exact top-k by cosine."""
    return set((np.argpartition(-(vectors @ query), TOP_K)[:TOP_K] + 1).tolist())


def _base(ctx: Context) -> tuple[Floats, list[str]]:
    """Distinct real embeddings for the table, and the texts they are of."""
    texts = ctx.corpus.short + ctx.corpus.mixed
    if ctx.vectors is None:
        ctx.vectors = ctx.embedder.embed(texts)
    base = ctx.vectors
    wanted = -(-ctx.plan.search_rows // ctx.plan.search_copies)
    if wanted > len(texts):
        more = search_lines(wanted - len(texts), set(texts) | set(ctx.corpus.queries))
        say(f"search: embedding {len(more)} more lines of the standard library")
        base = np.concatenate([base, ctx.embedder.embed(more)])
        texts = texts + more
    return base, texts


def _hnsw_options(conn: db.Connection, schema: str) -> dict[str, int]:
    """m and ef_construction of chunks_embedding_idx, read from the catalog."""
    options = one(
        conn,
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = 'chunks_embedding_idx'",
        (schema,),
    )
    found = dict(o.split("=", 1) for o in options or [])
    return {"m": int(found.get("m", 16)), "ef_construction": int(found.get("ef_construction", 64))}


def load_embedded(
    conn: db.Connection, schema: str, vectors: Floats, texts: list[str], section: str = "search"
) -> dict[str, Any]:
    """COPY the rows in with their vectors (the trigger marks them embedded), then
    build the schema's own HNSW index once, after the load."""
    options = _hnsw_options(conn, schema)
    conn.execute("DROP INDEX chunks_embedding_idx")
    rows = len(vectors)
    start = time.perf_counter()
    with (
        conn.cursor() as cur,
        cur.copy("COPY chunks (id, content, embedding) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(["int8", "text", "vector"])
        for i in range(rows):
            copy.write_row((i + 1, texts[i % len(texts)], vectors[i]))
    load_s = time.perf_counter() - start
    conn.execute("SELECT setval(pg_get_serial_sequence('chunks', 'id'), %s)", (rows,))
    say(f"{section}: {rows} rows loaded in {load_s:.1f} s; building the HNSW index")
    conn.execute("SET maintenance_work_mem = '1GB'")
    create = sql.SQL(
        "CREATE INDEX chunks_embedding_idx ON chunks USING hnsw "
        "(embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
    ).format(sql.Literal(options["m"]), sql.Literal(options["ef_construction"]))
    build_s = timed(lambda: conn.execute(create))
    conn.execute("VACUUM ANALYZE chunks")
    say(f"{section}: index built in {build_s:.1f} s")
    if count_state(conn, "embedded") != rows:
        raise IndexerError("the loaded rows are not all marked embedded")
    return {"index": options, "load_s": load_s, "index_build_s": build_s}


@dataclass
class _Timings:
    embed_ms: list[float] = field(default_factory=list)
    sql_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    recalls: list[float] = field(default_factory=list)
    #: Exact top-k and query vector of each query (first run only).
    truth: list[set[int]] = field(default_factory=list)
    queries: list[Floats] = field(default_factory=list)


def _time_searches(ctx: Context, schema: str, vectors: Floats) -> _Timings:
    """Every query through Store.search, as the daemon's users run it, ``repeats`` times."""
    from indexer.store import Store

    out = _Timings()
    with Store(ctx.dsn, schema) as store:
        for text in ctx.corpus.queries[:10]:  # warm-up: the index into the buffer cache
            store.search(ctx.embedder.embed([text])[0], TOP_K)
        for repeat in range(ctx.plan.repeats):
            for text in ctx.corpus.queries:
                t0 = time.perf_counter()
                query = ctx.embedder.embed([text])[0]
                t1 = time.perf_counter()
                hits = store.search(query, TOP_K)
                t2 = time.perf_counter()
                out.embed_ms.append((t1 - t0) * 1000)
                out.sql_ms.append((t2 - t1) * 1000)
                out.total_ms.append((t2 - t0) * 1000)
                if repeat == 0:
                    exact = _exact_top(vectors, query)
                    out.truth.append(exact)
                    out.queries.append(query)
                    out.recalls.append(len({h.id for h in hits} & exact) / TOP_K)
    return out


def _recall_by_ef(conn: db.Connection, timings: _Timings) -> dict[str, float]:
    """Recall against ef_search, on the same query vectors: a graph that cannot reach
    the right region stays low however wide the search; a narrow search does not."""
    by_ef: dict[str, float] = {}
    for ef in EF_SEARCH_CURVE:
        found = 0
        with conn.transaction():
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
            for query, exact in zip(timings.queries, timings.truth, strict=True):
                got = conn.execute(NEAREST_SQL, (query, TOP_K)).fetchall()
                found += len({r["id"] for r in got} & exact)
        by_ef[str(ef)] = round(found / (TOP_K * len(timings.truth)), 4)
    return by_ef


def _exact_check(ctx: Context, conn: db.Connection, vectors: Floats) -> str:
    """The numpy ground truth against PostgreSQL's own exact scan, for a few queries."""
    agree = 0
    checked = ctx.corpus.queries[:3]
    for text in checked:
        query = ctx.embedder.embed([text])[0]
        with conn.transaction():
            conn.execute("SET LOCAL enable_indexscan = off")
            scanned = {r["id"] for r in conn.execute(NEAREST_SQL, (query, TOP_K))}
        agree += scanned == _exact_top(vectors, query)
    return f"{agree}/{len(checked)} queries: numpy top-{TOP_K} = PostgreSQL seq scan"


def bench_search(ctx: Context, results: dict[str, Any]) -> None:
    from indexer.store.store import EF_SEARCH

    rows = ctx.plan.search_rows
    base, texts = _base(ctx)
    vectors = search_vectors(base, rows)
    with scratch_schema(ctx, "search") as (schema, conn):
        loaded = load_embedded(conn, schema, vectors, texts)
        timings = _time_searches(ctx, schema, vectors)
        by_ef = _recall_by_ef(conn, timings)
        exact_check = _exact_check(ctx, conn, vectors)
    recalls, queries = timings.recalls, ctx.corpus.queries
    worst = sorted(range(len(recalls)), key=recalls.__getitem__)[:3]
    results["search"] = {
        "rows": rows,
        "queries": len(queries),
        "runs": ctx.plan.repeats,
        "vectors": f"{len(base)} real embeddings of standard-library text, each used for "
        f"{rows / len(base):.1f} rows on average with its own gaussian noise "
        f"(sigma {NOISE_SIGMA} per dimension: cosine ~0.89 to the original), re-normalised",
        "distinct_embeddings": len(base),
        "k": TOP_K,
        "ef_search": EF_SEARCH,
        "index": {"type": "hnsw", "ops": "vector_cosine_ops", **loaded["index"]},
        "load_s": round(loaded["load_s"], 1),
        "index_build_s": round(loaded["index_build_s"], 1),
        "p50_ms": round(percentile(timings.total_ms, 50), 2),
        "p95_ms": round(percentile(timings.total_ms, 95), 2),
        "embed_p50_ms": round(percentile(timings.embed_ms, 50), 2),
        "sql_p50_ms": round(percentile(timings.sql_ms, 50), 2),
        "sql_p95_ms": round(percentile(timings.sql_ms, 95), 2),
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "min_recall_at_10": round(float(np.min(recalls)), 2),
        "recall_by_ef_search": by_ef,
        "worst_queries": [{"query": queries[i], "recall": recalls[i]} for i in worst],
        "exact_check": exact_check,
    }
