"""Opt-in row: pgvector's ``halfvec`` (2-byte floats) against ``vector`` (4-byte floats)
for 384-dimensional embeddings, the same rows in both, measured in one run.

halfvec halves what a vector costs on disk and in the buffer cache; what it may cost is
recall (the index ranks by distances between rounded values) and time (pgvector widens
each half to a float as it computes a distance).  For each type this row makes a table
``(id bigint primary key, embedding <type>(384))`` and measures its size, its HNSW
index's size and build time (the type's cosine operator class, with the options the
indexer builds a model's index with: :data:`INDEX_OPTIONS`), the latency of top-10
searches at ``hnsw.ef_search`` 100 (the query cast to the column's type, as an
application would send it) and their recall@10 against the exact top 10 of the float32
vectors, computed in numpy.

**The vectors.**  Uniformly random 384-d vectors are nearly orthogonal to one another:
every row is about as far from a query as every other, so an approximate index's recall
on them says nothing about embeddings.  Embedding a million texts would take hours on a
CPU.  So a few thousand real texts (source lines of the standard library, as the search
section uses: no download) are embedded with the configured model, and each row is a
mix of three of those embeddings that are near one another (an anchor, and two of its
:data:`NEIGHBOURS` nearest), with Dirichlet weights, plus gaussian noise, normalised.
The rows stay where real embeddings are, dense where they are dense, without the tight
clusters of near-duplicates that copying each embedding hundreds of times would make
(HNSW handles those badly: the search section's ``--search-copies``).  The queries are
drawn the same way after the rows: the same distribution, none of them in the table.
Checked against real embeddings at a size that can be embedded: 23,800 distinct
standard-library lines, 200 others as queries, gave recall@10 0.9925 (vector, ef_search
100) and median cosines 0.77 / 0.59 / 0.46 to the 1st / 10th / 100th nearest row; as
many of these vectors (mixed from 2,380 embeddings) gave 0.997 and 0.73 / 0.64 / 0.46.

**Fairness.**  Both tables hold the same values: the vector table is loaded with binary
COPY, the halfvec table from it with ``embedding::halfvec(384)`` (pgvector's own
rounding); both are vacuumed and analysed, and a checkpoint precedes each build.  Both
builds get the same ``maintenance_work_mem`` (:data:`MAINTENANCE_WORK_MEM`, enough for
the larger graph at a million rows: a build that outgrows it goes on on disk, many times
slower, and the row records whether that happened) and the same parallel workers (one
fewer than the usable cores, as the server allows).  Each index is built ``--repeats``
times, the order of the two swapped each round: the build figure is the median, the
ratio the median of the rounds' ratios (a single pair, one order, measured the order and
the machine's load as much as the types: 0.82x with vector first, 1.27x with halfvec
first, at a million rows on a shared machine).  Every graph's recall is measured and
the mean reported: two builds of the same rows are not the same graph.  Searches are
timed on the last graphs, after a warm-up pass over every query, the two types
alternating query by query so that load that drifts during the run hits both alike.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from indexer.bench.common import (
    DIM,
    SEED,
    TOP_K,
    Floats,
    median,
    normalise,
    paired_ratio,
    percentile,
    say,
)
from indexer.bench.context import Context
from indexer.bench.corpus import search_lines
from indexer.bench.machine import loadavg, usable_cores
from indexer.bench.scratch import SCHEMA_HINT, SCHEMA_MARKER, migrated_schema, one
from indexer.db import connect as db
from indexer.embedding import Embedder
from indexer.exceptions import IndexerError

#: The two column types, each with its HNSW cosine operator class.
TYPES = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops"}
#: Each type's HNSW options (m, ef_construction), as the indexer builds a model's index
#: (migration 0012's ``model_index_options``): halfvec with fewer neighbours, so that 8
#: graph elements fit a page instead of 7, and more candidates while building.
INDEX_OPTIONS = {"vector": (16, 64), "halfvec": (13, 100)}
EF_SEARCH = 100
QUERIES = 1000
#: The same for both builds, and enough for the larger graph at a million rows with
#: room to spare: pgvector's in-memory graph takes about 2.4 kB a row for vector(384)
#: and 1.5 kB for halfvec(384) (measured from where a build with 64MB outgrew it).
MAINTENANCE_WORK_MEM = "3GB"
#: Real embeddings the rows are mixed from: a few thousand, fewer for small tables.
MAX_BASE_TEXTS = 4000
MIN_BASE_TEXTS = 200
#: Embeddings mixed into each row, and how many nearest ones its companions come from.
MIX = 3
NEIGHBOURS = 16
#: Gaussian noise per dimension, added to each normalised mix: about 0.59 in norm, a
#: cosine of about 0.86 to the mix.  Chosen so that the vectors' nearest neighbours are
#: about as near as real ones (see the module's docstring); 0.02 made them nearer.
NOISE_SIGMA = 0.03
#: Rows generated, copied or scored at a time (bounds the memory of the temporaries).
STEP = 20_000

Ids = npt.NDArray[np.int64]


def base_count(rows: int) -> int:
    """How many real texts to embed for ``rows`` rows."""
    return min(MAX_BASE_TEXTS, max(MIN_BASE_TEXTS, rows // 10))


def nearest(base: Floats, count: int) -> Ids:
    """Each embedding's ``count`` nearest others by cosine (indices into ``base``)."""
    sims = base @ base.T
    np.fill_diagonal(sims, -np.inf)
    count = min(count, len(base) - 1)
    found: Ids = np.argpartition(-sims, count - 1, axis=1)[:, :count].astype(np.int64)
    return found


def mixed_vectors(base: Floats, neighbours: Ids, count: int, rng: np.random.Generator) -> Floats:
    """``count`` unit vectors, each a Dirichlet-weighted mix of an embedding and two of
    its nearest, plus gaussian noise (see the module's docstring)."""
    out = np.empty((count, base.shape[1]), dtype=np.float32)
    for start in range(0, count, STEP):
        n = min(STEP, count - start)
        anchors = rng.integers(0, len(base), n)
        picks = rng.integers(0, neighbours.shape[1], (n, MIX - 1))
        members = np.concatenate([anchors[:, None], neighbours[anchors[:, None], picks]], axis=1)
        weights = rng.dirichlet(np.ones(MIX), n).astype(np.float32)
        mix = np.einsum("nk,nkd->nd", weights, base[members])
        noise = rng.standard_normal(mix.shape, dtype=np.float32) * NOISE_SIGMA
        out[start : start + n] = normalise(normalise(mix) + noise)
    return out


def make_vectors(base: Floats, rows: int, queries: int) -> tuple[Floats, Floats]:
    """The table's rows and the held-out queries, from one fixed-seed generator."""
    rng = np.random.default_rng(SEED + 384)
    neighbours = nearest(base, NEIGHBOURS)
    return mixed_vectors(base, neighbours, rows, rng), mixed_vectors(base, neighbours, queries, rng)


def _as_half(x: Floats) -> Floats:
    """``x`` rounded to 2-byte floats as halfvec stores them, back in float32, normalised."""
    return normalise(x.astype(np.float16).astype(np.float32))


def exact_top(vectors: Floats, queries: Floats, k: int, *, half: bool = False) -> Ids:
    """Row ids (1-based, as loaded) of each query's exact top-k by cosine, best first.

    ``half``: of the vectors and queries rounded to halfvec's precision, which is what
    an exact scan of the halfvec table would return (what rounding alone costs).
    """
    qs = _as_half(queries) if half else normalise(queries)
    best_s = np.full((len(qs), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(qs), 0), dtype=np.int64)
    for start in range(0, len(vectors), STEP):
        chunk = vectors[start : start + STEP]
        scores = qs @ (_as_half(chunk) if half else normalise(chunk)).T
        ids = np.broadcast_to(np.arange(start + 1, start + 1 + len(chunk)), scores.shape)
        all_s = np.concatenate([best_s, scores], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        keep = min(k, all_s.shape[1])
        part = np.argpartition(-all_s, keep - 1, axis=1)[:, :keep]
        best_s = np.take_along_axis(all_s, part, axis=1)
        best_i = np.take_along_axis(all_i, part, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    top: Ids = np.take_along_axis(best_i, order, axis=1)
    return top


def recalls(found: list[list[int]], truth: Ids) -> list[float]:
    """Per query: the share of the exact top-k among the ids found."""
    k = truth.shape[1]
    return [len(set(f) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]


def _table(type_name: str) -> str:
    return f"items_{type_name}"


def _index(type_name: str) -> str:
    return f"items_{type_name}_hnsw"


def _load(conn: db.Connection, vectors: Floats) -> float:
    """Both tables, the same values: COPY into the vector table, cast into the other."""
    for type_name in TYPES:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, embedding {}({}) NOT NULL)").format(
                sql.Identifier(_table(type_name)), sql.Identifier(type_name), sql.Literal(DIM)
            )
        )
    start = time.perf_counter()
    copy_sql = sql.SQL("COPY {} (id, embedding) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(_table("vector"))
    )
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        copy.set_types(["int8", "vector"])
        for i in range(len(vectors)):
            copy.write_row((i + 1, vectors[i]))
    conn.execute(
        sql.SQL("INSERT INTO {} (id, embedding) SELECT id, embedding::{}({}) FROM {}").format(
            sql.Identifier(_table("halfvec")),
            sql.Identifier("halfvec"),
            sql.Literal(DIM),
            sql.Identifier(_table("vector")),
        )
    )
    for type_name in TYPES:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(_table(type_name))))
    return time.perf_counter() - start


def build_workers(conn: db.Connection) -> int:
    """Parallel workers for both builds: one fewer than the usable cores (the leader
    builds too), no more than the server lets a statement have."""
    allowed = int(one(conn, "SHOW max_parallel_workers"))
    return max(0, min(usable_cores() - 1, allowed))


@contextlib.contextmanager
def _notices(conn: db.Connection) -> Iterator[list[str]]:
    """The server's messages (DEBUG1 and up) while the block runs."""
    seen: list[str] = []

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        seen.append(f"{diag.severity_nonlocalized}: {diag.message_primary}")

    conn.add_notice_handler(keep)
    try:
        yield seen
    finally:
        conn.remove_notice_handler(keep)


_WORKERS = re.compile(r"using (\d+) parallel workers")
_SPILLED = re.compile(r"hnsw graph no longer fits into maintenance_work_mem after (\d+) tuples")


def _checkpoint(conn: db.Connection) -> None:
    """Each build starts with no dirty pages of the load to write (a role that may not
    CHECKPOINT skips it)."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def _build(conn: db.Connection, type_name: str, memory: str, workers: int) -> dict[str, Any]:
    """CREATE INDEX ... USING hnsw, timed; what pgvector said about workers and memory."""
    create = sql.SQL(
        "CREATE INDEX {} ON {} USING hnsw (embedding {}) WITH (m = {}, ef_construction = {})"
    ).format(
        sql.Identifier(_index(type_name)),
        sql.Identifier(_table(type_name)),
        sql.Identifier(TYPES[type_name]),
        *(sql.Literal(v) for v in INDEX_OPTIONS[type_name]),
    )
    _checkpoint(conn)
    load = loadavg()
    with _notices(conn) as said:
        start = time.perf_counter()
        with conn.transaction():
            conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (memory,))
            conn.execute(
                "SELECT set_config('max_parallel_maintenance_workers', %s, true)", (str(workers),)
            )
            conn.execute("SELECT set_config('client_min_messages', 'debug1', true)")
            conn.execute(create)
        seconds = time.perf_counter() - start
    launched = [int(m.group(1)) for s in said if (m := _WORKERS.search(s))]
    spilled = [int(m.group(1)) for s in said if (m := _SPILLED.search(s))]
    return {
        "build_s": seconds,
        "workers": launched[0] if launched else 0,
        "spilled_after": spilled[0] if spilled else None,
        "loadavg": load,
        "notices": [s for s in said if not s.startswith("DEBUG")],
    }


def _builds(
    conn: db.Connection, settings: tuple[str, int], repeats: int, queries: Floats, truth: Ids
) -> dict[str, dict[str, Any]]:
    """Each index built ``repeats`` times (``settings``: maintenance_work_mem and the
    workers), the order of the two types swapped each round (vector first in the first),
    so that neither always runs second, after the other's build has warmed or loaded the
    machine; the last build of each is kept.

    Every graph's recall is measured: two builds of the same rows are not the same graph
    (the parallel build's interleaving decides which neighbours each row gets), and at a
    million rows one graph's recall@10 differs from the next by as much as the 0.002 the
    target allows, so the row reports the mean over the builds.
    """
    memory, workers = settings
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TYPES}
    for round_ in range(repeats):
        for type_name in list(TYPES) if round_ % 2 == 0 else list(TYPES)[::-1]:
            if round_:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(_index(type_name))))
            say(f"halfvec: building the {type_name} index ({memory}, {workers} workers)")
            built = _build(conn, type_name, memory, workers)
            built["recalls"] = recalls(_top_ids(conn, type_name, queries), truth)
            runs[type_name].append(built)
            say(
                f"halfvec: {type_name} index built in {built['build_s']:.1f} s, "
                f"recall@10 {np.mean(built['recalls']):.4f}"
            )
    out: dict[str, dict[str, Any]] = {}
    for type_name, builds in runs.items():
        spilled = [b["spilled_after"] for b in builds if b["spilled_after"] is not None]
        by_build = [float(np.mean(b["recalls"])) for b in builds]
        out[type_name] = {
            "build_s": round(median([b["build_s"] for b in builds]), 2),
            "builds_s": [round(b["build_s"], 2) for b in builds],
            "loadavg_before_builds": [b["loadavg"] for b in builds],
            "workers": min(b["workers"] for b in builds),
            "graph_fit": not spilled,
            "spilled_after": spilled[0] if spilled else None,
            "notices": sorted({n for b in builds for n in b["notices"]}),
            "recall_at_10": round(float(np.mean(by_build)), 4),
            "recall_by_build": [round(r, 4) for r in by_build],
            "min_recall_at_10": round(min(min(b["recalls"]) for b in builds), 2),
        }
    return out


_SIZES = (
    'SELECT pg_relation_size(c.oid) AS heap, pg_table_size(c.oid) AS "table",'
    " pg_indexes_size(c.oid) AS indexes FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
)


def _sizes(conn: db.Connection, schema: str, type_name: str) -> dict[str, int]:
    """Bytes on disk: the heap alone, the table (heap, TOAST, free space and visibility
    maps), all its indexes (the primary key too) and the HNSW index alone."""
    row = conn.execute(_SIZES, (schema, _table(type_name))).fetchone()
    if row is None:
        raise IndexerError(f"table {_table(type_name)} is missing")
    hnsw = one(
        conn,
        "SELECT pg_relation_size(c.oid) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, _index(type_name)),
    )
    return {
        "heap_bytes": int(row["heap"]),
        "table_bytes": int(row["table"]),
        "indexes_bytes": int(row["indexes"]),
        "hnsw_bytes": int(hnsw),
    }


def _nearest_sql(type_name: str) -> sql.Composed:
    return sql.SQL("SELECT id FROM {} ORDER BY embedding <=> CAST(%s AS {}({})) LIMIT %s").format(
        sql.Identifier(_table(type_name)), sql.Identifier(type_name), sql.Literal(DIM)
    )


def _check_plan(conn: db.Connection, type_name: str, query: Floats) -> None:
    """The search must be an index scan of the HNSW index: a cast to the wrong type
    would make it a sequential scan, and the figures would be of that."""
    plan = conn.execute(sql.SQL("EXPLAIN ") + _nearest_sql(type_name), (query, TOP_K)).fetchall()
    text = "\n".join(str(next(iter(r.values()))) for r in plan)
    if _index(type_name) not in text:
        raise IndexerError(f"the {type_name} search does not use its HNSW index:\n{text}")


def _search(conn: db.Connection, statement: sql.Composed, query: Floats) -> tuple[list[int], float]:
    """One top-k search: the ids found and the milliseconds it took, round trip."""
    start = time.perf_counter()
    ids = [r["id"] for r in conn.execute(statement, (query, TOP_K))]
    return ids, (time.perf_counter() - start) * 1000


def _search_settings(conn: db.Connection) -> None:
    """The session's search width; and the index at any size: a small table is cheaper
    to sort whole, and the planner says so (at a million rows it picks the index anyway)."""
    conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", (str(EF_SEARCH),))
    conn.execute("SET enable_seqscan = off")


def _top_ids(conn: db.Connection, type_name: str, queries: Floats) -> list[list[int]]:
    """Each query's top k through the type's HNSW index (checked to be the plan)."""
    _check_plan(conn, type_name, queries[0])
    statement = _nearest_sql(type_name)
    return [_search(conn, statement, q)[0] for q in queries]


def _time_searches(conn: db.Connection, queries: Floats, repeats: int) -> dict[str, list[float]]:
    """Per type: the latencies of ``repeats`` passes over every query, after a warm-up
    pass, the two types alternating query by query."""
    for type_name in TYPES:
        _top_ids(conn, type_name, queries)
    statements = {t: _nearest_sql(t) for t in TYPES}
    times: dict[str, list[float]] = {t: [] for t in TYPES}
    order = list(TYPES)
    for _ in range(repeats):
        for i, query in enumerate(queries):
            for type_name in order if i % 2 == 0 else order[::-1]:
                times[type_name].append(_search(conn, statements[type_name], query)[1])
    return times


def _exact_check(conn: db.Connection, queries: Floats, truth: Ids) -> str:
    """The numpy ground truth against PostgreSQL's own exact scan of the vector table."""
    checked = min(3, len(queries))
    agree = 0
    for query, exact in zip(queries[:checked], truth[:checked], strict=True):
        with conn.transaction():
            conn.execute("SET LOCAL enable_indexscan = off")
            conn.execute("SET LOCAL enable_seqscan = on")
            scanned = _search(conn, _nearest_sql("vector"), query)[0]
        agree += set(scanned) == set(exact.tolist())
    return f"{agree}/{checked} queries: numpy top-{TOP_K} = PostgreSQL seq scan"


def _ratio(results: dict[str, dict[str, Any]], key: str) -> float:
    return round(float(results["halfvec"][key]) / float(results["vector"][key]), 4)


def measure(
    dsn: str,
    admin: db.Connection,
    embedder: Embedder,
    rows: int,
    *,
    schema: str,
    queries: int = QUERIES,
    repeats: int = 3,
    memory: str = MAINTENANCE_WORK_MEM,
) -> dict[str, Any]:
    """Every figure of the row, for ``rows`` rows, in a scratch schema ``schema``
    (made, marked and dropped here; see :func:`~indexer.bench.scratch.migrated_schema`)."""
    texts = search_lines(base_count(rows), set())
    say(f"halfvec: embedding {len(texts)} lines of the standard library")
    base = embedder.embed(texts)
    if base.shape[1] != DIM:
        raise IndexerError(f"the model makes {base.shape[1]}-d vectors, not {DIM}")
    vectors, query_vectors = make_vectors(base, rows, queries)
    truth = exact_top(vectors, query_vectors, TOP_K)
    rounded_truth = exact_top(vectors, query_vectors, TOP_K, half=True)
    say(f"halfvec: loading {rows} rows into each table")
    per_type: dict[str, dict[str, Any]] = {t: {"ops": ops} for t, ops in TYPES.items()}
    with migrated_schema(
        dsn, admin, schema, marker=SCHEMA_MARKER, hint=SCHEMA_HINT, migrated=False
    ) as conn:
        load_s = _load(conn, vectors)
        workers = build_workers(conn)
        _search_settings(conn)
        built = _builds(conn, (memory, workers), repeats, query_vectors, truth)
        for type_name, figures in built.items():
            per_type[type_name].update(figures)
            per_type[type_name].update(_sizes(conn, schema, type_name))
        times = _time_searches(conn, query_vectors, repeats)
        exact_check = _exact_check(conn, query_vectors, truth)
        version = one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    for type_name, figures in per_type.items():
        figures["p50_ms"] = round(percentile(times[type_name], 50), 3)
        figures["p95_ms"] = round(percentile(times[type_name], 95), 3)
    ratios = {
        name: _ratio(per_type, key)
        for name, key in (
            ("table", "table_bytes"),
            ("hnsw_index", "hnsw_bytes"),
            ("p50", "p50_ms"),
            ("p95", "p95_ms"),
        )
    }
    # Build by build, round by round: load that drifts between rounds cancels out.
    builds = (per_type["halfvec"]["builds_s"], per_type["vector"]["builds_s"])
    ratios["build"] = round(paired_ratio(*builds), 4)
    return {
        "rows": rows,
        "dim": DIM,
        "queries": queries,
        "runs": repeats,
        "k": TOP_K,
        "ef_search": EF_SEARCH,
        "index": {
            t: {"type": "hnsw", "m": m, "ef_construction": ef}
            for t, (m, ef) in INDEX_OPTIONS.items()
        },
        "maintenance_work_mem": memory,
        "max_parallel_maintenance_workers": workers,
        "pgvector": version,
        "base_texts": len(texts),
        "vectors": f"{rows:,} rows and {queries} held-out queries, each a Dirichlet mix of "
        f"{MIX} of {len(texts)} real embeddings of standard-library lines (one and {MIX - 1} "
        f"of its {NEIGHBOURS} nearest) plus gaussian noise (sigma {NOISE_SIGMA} per "
        "dimension), normalised; the halfvec table cast from the vector table",
        "load_s": round(load_s, 1),
        "types": per_type,
        "ratios": ratios,
        "recall_diff": round(
            per_type["halfvec"]["recall_at_10"] - per_type["vector"]["recall_at_10"], 4
        ),
        "rounding_recall_at_10": round(float(np.mean(recalls(rounded_truth.tolist(), truth))), 4),
        "exact_check": exact_check,
    }


def bench_halfvec(ctx: Context, results: dict[str, Any]) -> None:
    results["halfvec"] = measure(
        ctx.dsn,
        ctx.admin,
        ctx.embedder,
        ctx.plan.halfvec_rows,
        schema=ctx.schema("halfvec"),
        repeats=ctx.plan.repeats,
    )
