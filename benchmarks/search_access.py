"""What chunks' row-level security (migration 0006) costs document search.

    .venv/bin/python benchmarks/search_access.py [--rows 20000] [--queries 200]
        [--large-queries 100] [--budget 45] [--k 10,100] [--json PATH]

Starts an embedded PostgreSQL of its own (``.tmp/bench-access-pgdata``), creates a
migrated database, a source table ``tickets(id, tenant, body)`` of ``--rows`` rows
registered with ``add_source``, and 1 to 3 passages per document written straight into
``chunks`` with random unit vectors (dimension 384, fixed seed; the HNSW index is built
on them).  A copy of that database (``CREATE DATABASE ... TEMPLATE``: the same rows, the
same index) gets row-level security on ``tickets``: ``USING (tenant = current_user)``,
one tenant owning every third row.  Then ``SELECT * FROM search_documents(query, k)`` is
timed, with the same random query vectors, for each case:

* owner: the superuser that migrated the database (chunks' policy does not apply), in
  each database;
* readable_sources: a role given ``grant_search`` and SELECT on ``tickets``, which has
  no row-level security: the policy's per-statement path;
* passage_visible, 1/3 visible: the tenant role on the copy with row-level security:
  the policy's per-row path (each passage's key looked up in ``tickets`` as that role),
  which also has to read about three passages for each one it may see;
* passage_visible, all visible: a role on the same copy that a second policy lets read
  every row: the per-row path's own cost, without the selectivity.

The cases of one database run interleaved (each query in every case, in a shuffled
order, each search in a transaction of its own), so a load that drifts on shared cores
hits them alike.  The two databases are measured one after the other, with the same
queries: together they do not fit in the embedded server's shared_buffers (128 MB), and
switching between them on every query charges the reloads to whichever case comes first
after a switch (the owner came out up to 2x slower than the reader that way).  Each
database and k runs up to ``--queries`` queries (k <= 10) or ``--large-queries``, after
up to ``--warmup`` untimed ones, and stops early when ``--budget`` seconds are spent
(at least ``--min-queries`` timed, one warm-up): a per-row check that the planner
applies to every passage takes seconds per search.

Printed per case: the queries timed, p50, p95 and mean in ms, p50 and p95 divided by
the p50 of the owner in the same database, the documents returned, how often they were
the owner's (in order; the planner may read a role's passages exactly, with no index,
where it uses the HNSW index for the owner), and the calls of ``passage_visible`` and
``readable_sources`` per search (the roles run with track_functions = all; the count is
read in the search's transaction, outside the timing).  Then a summary, and the cost of
one ``passage_visible`` call on its own.  Timings are figures to read, not checks; the
script fails only if the tenant is shown another tenant's row.  The roles and databases
are dropped and the server stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from indexer.db import migrate, server

ROOT = Path(__file__).resolve().parent.parent
DIM = 384
SOURCE = "public.tickets"
PLAIN_DB = "bench_access_plain"
RLS_DB = "bench_access_rls"
SEARCH = "SELECT * FROM search_documents(%s::vector, %s)"
FILLER = " ".join(["lorem ipsum dolor sit amet"] * 12)  # a passage of ~330 characters
# Calls so far of the two functions chunks' policy runs (NULL: not tracked, or none yet).
CALLS = (
    "SELECT pg_stat_get_xact_function_calls("
    "'public.passage_visible(integer, text)'::regprocedure),"
    " pg_stat_get_xact_function_calls('public.readable_sources(boolean)'::regprocedure)"
)


@dataclass
class Case:
    name: str
    label: str
    database: str  # PLAIN_DB or RLS_DB
    baseline: str  # the owner case of the same database
    role: str | None  # None: the superuser (the owner)


@dataclass
class Result:
    case: str
    label: str
    k: int
    queries: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    p50_x_owner: float
    p95_x_owner: float
    docs_mean: float
    same_as_owner: float  # share of queries with the owner's documents, in its order
    passage_visible_calls: float | None  # per search; None: not tracked (the owner)
    readable_sources_calls: float | None
    samples_ms: list[float] = field(repr=False)


@dataclass
class Run:
    """What one case's timed searches took, found and called."""

    times: list[float] = field(default_factory=list)
    keys: list[list[str]] = field(default_factory=list)
    passage_visible: list[int] = field(default_factory=list)
    readable_sources: list[int] = field(default_factory=list)
    tracked: bool = False


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def with_database(dsn: str, database: str) -> str:
    info = conninfo_to_dict(dsn)
    info["dbname"] = database
    return make_conninfo(**{k: str(v) for k, v in info.items()})


def create_database(admin: str, name: str, template: str | None = None) -> str:
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(admin, autocommit=True) as conn:
        drop_database(conn, name)
        conn.execute(statement)
    return with_database(admin, name)


def drop_database(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def vector_text(v: np.ndarray[Any, np.dtype[np.float32]]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in v.tolist()) + "]"


def populate(dsn: str, rows: int, tenant: str, rng: np.random.Generator) -> tuple[int, float]:
    """The source table, its documents, their passages and the HNSW index; the number
    of passages and the seconds the index took to build."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tickets (id bigint PRIMARY KEY, tenant text, body text)")
        conn.execute("SELECT add_source('tickets', NULL, ARRAY['body'])")
        # Every third row is the tenant's (its role, on the copy with row-level security).
        conn.execute(
            "INSERT INTO tickets SELECT g, CASE WHEN g %% 3 = 0 THEN %s"
            " ELSE 'tenant_' || (g %% 3) END, 'ticket ' || g FROM generate_series(1, %s) g",
            (tenant, rows),
        )
        documents = conn.execute(
            "SELECT d.id, d.source_id, d.doc_key FROM source_documents d"
            " JOIN sources s ON s.id = d.source_id WHERE s.name = %s ORDER BY d.id",
            (SOURCE,),
        ).fetchall()
        counts = rng.integers(1, 4, size=len(documents))
        vectors = unit_vectors(rng, int(counts.sum()))
        # Built after the load (as a restore would): much faster than row by row, and the
        # same index.
        (index_def,) = conn.execute(
            "SELECT pg_get_indexdef('chunks_embedding_idx'::regclass)"
        ).fetchone() or ("",)
        conn.execute("DROP INDEX chunks_embedding_idx")
        register_vector(conn)
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY chunks (content, embedding, document_id, source_id, doc_key, position,"
                " char_start, char_end) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["text", "vector", "int8", "int4", "text", "int4", "int4", "int4"])
            n = 0
            for (document_id, source_id, key), count in zip(documents, counts, strict=True):
                for position in range(int(count)):
                    content = f"passage {position} of ticket {key}: {FILLER}"
                    start = position * len(content)
                    copy.write_row(
                        (
                            content,
                            vectors[n],
                            document_id,
                            source_id,
                            key,
                            position,
                            start,
                            start + len(content),
                        )
                    )
                    n += 1
        # As the daemon leaves them once their passages are written.
        conn.execute(
            "UPDATE source_documents d SET state = 'indexed', indexed_at = now(),"
            " chunk_count = (SELECT count(*) FROM chunks c WHERE c.document_id = d.id)"
        )
        conn.execute("SET maintenance_work_mem = '512MB'")
        started = time.perf_counter()
        conn.execute(index_def)
        built = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE chunks, tickets, source_documents, sources")
    return n, built


@contextmanager
def roles(admin: str, names: list[str]) -> Iterator[None]:
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for database in (PLAIN_DB, RLS_DB):
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
                ).fetchone()
                if exists is not None:
                    with psycopg.connect(with_database(admin, database), autocommit=True) as db:
                        for name in names:
                            db.execute(
                                sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name))
                            )
                drop_database(conn, database)
            for name in names:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def grant(conn: psycopg.Connection[Any], role: str) -> None:
    conn.execute("SELECT grant_search(%s)", (role,))
    conn.execute(sql.SQL("GRANT SELECT ON tickets TO {}").format(sql.Identifier(role)))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def calls(conn: psycopg.Connection[Any]) -> tuple[int | None, int | None]:
    row = conn.execute(CALLS).fetchone()
    assert row is not None
    return row[0], row[1]


def search(conn: psycopg.Connection[Any], query: str, k: int, run: Run | None) -> None:
    """One search in a transaction of its own; timed and counted into ``run``."""
    before = calls(conn)
    started = time.perf_counter()
    rows = conn.execute(SEARCH, (query, k)).fetchall()
    elapsed = (time.perf_counter() - started) * 1000
    after = calls(conn)
    conn.commit()
    if run is None:
        return
    run.times.append(elapsed)
    run.keys.append([str(r[1]) for r in rows])
    if after[0] is not None or after[1] is not None:
        run.tracked = True
    run.passage_visible.append((after[0] or 0) - (before[0] or 0))
    run.readable_sources.append((after[1] or 0) - (before[1] or 0))


def measure(
    conns: dict[str, psycopg.Connection[Any]],
    queries: list[str],
    k: int,
    warmup: int,
    budget: float,
    min_queries: int,
    rng: np.random.Generator,
) -> dict[str, Run]:
    """Each query in every case, in an order shuffled per query: up to ``warmup``
    untimed rounds (one at least; no more once a quarter of ``budget`` is spent), then
    timed rounds until the queries or the budget run out (``min_queries`` at least)."""
    names = list(conns)
    runs = {name: Run() for name in names}
    started = time.perf_counter()
    warm = 0
    timed = 0
    last_round = 0.0
    for query in queries:
        elapsed = time.perf_counter() - started
        warming = warm < warmup and (warm == 0 or elapsed < budget / 4)
        if not warming:
            warm = warmup
            if timed >= min_queries and elapsed + last_round > budget:
                break
        round_started = time.perf_counter()
        for j in rng.permutation(len(names)):
            name = names[int(j)]
            search(conns[name], query, k, None if warming else runs[name])
        last_round = time.perf_counter() - round_started
        if warming:
            warm += 1
        else:
            timed += 1
    return runs


def passage_visible_cost(dsn: str, calls: int) -> float:
    """Microseconds per ``passage_visible`` call, as the role of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT id FROM sources WHERE name = %s", (SOURCE,)).fetchone()
        assert row is not None
        statement = (
            "SELECT count(*) FILTER (WHERE passage_visible(%s, g::text))"
            " FROM generate_series(1, %s) g"
        )
        conn.execute(statement, (row[0], 200)).fetchone()  # warm the plan caches
        started = time.perf_counter()
        conn.execute(statement, (row[0], calls)).fetchone()
        return (time.perf_counter() - started) * 1e6 / calls


def setup(admin: str, rows: int, reader: str, tenant: str, everyone: str) -> dict[str, Any]:
    """Both databases, with their grants and policies; what the setup found and took."""
    rng = np.random.default_rng(0)
    plain = create_database(admin, PLAIN_DB)
    started = time.perf_counter()
    migrate.upgrade(plain, "public")
    migrated = time.perf_counter() - started
    started = time.perf_counter()
    passages, index_s = populate(plain, rows, tenant, rng)
    loaded = time.perf_counter() - started
    rls = create_database(admin, RLS_DB, template=PLAIN_DB)
    with psycopg.connect(plain, autocommit=True) as conn:
        grant(conn, reader)
        versions = conn.execute(
            "SELECT current_setting('server_version'),"
            " (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
            " current_setting('shared_buffers')"
        ).fetchone()
        assert versions is not None
    with psycopg.connect(rls, autocommit=True) as conn:
        conn.execute("ALTER TABLE tickets ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY own ON tickets USING (tenant = current_user)")
        conn.execute(
            sql.SQL("CREATE POLICY everything ON tickets TO {} USING (true)").format(
                sql.Identifier(everyone)
            )
        )
        grant(conn, tenant)
        grant(conn, everyone)
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "postgres": versions[0],
        "pgvector": versions[1],
        "shared_buffers": versions[2],
        "python": sys.version.split()[0],
        "rows": rows,
        "passages": passages,
        "migrate_s": migrated,
        "load_s": loaded,
        "index_build_s": index_s,
    }


def result(case: Case, k: int, run: Run, owner: Run) -> Result:
    owner_p50 = percentile(owner.times, 50)
    p50 = percentile(run.times, 50)
    p95 = percentile(run.times, 95)
    same = [a == b for a, b in zip(run.keys, owner.keys, strict=True)]
    return Result(
        case=case.name,
        label=case.label,
        k=k,
        queries=len(run.times),
        p50_ms=p50,
        p95_ms=p95,
        mean_ms=float(np.mean(run.times)),
        p50_x_owner=p50 / owner_p50,
        p95_x_owner=p95 / owner_p50,
        docs_mean=float(np.mean([len(found) for found in run.keys])),
        same_as_owner=float(np.mean(same)),
        passage_visible_calls=float(np.mean(run.passage_visible)) if run.tracked else None,
        readable_sources_calls=float(np.mean(run.readable_sources)) if run.tracked else None,
        samples_ms=run.times,
    )


def print_results(k: int, took: float, results: dict[str, Result], passages: int) -> str:
    """The table for one k; its summary line."""
    print(f"\nk={k} (timed and warm-up runs took {took:.0f} s)")
    print(
        f"{'case':<38} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'p50/own':>8}"
        f" {'p95/own':>8} {'docs':>5} {'=own':>5} {'pv/q':>7} {'rs/q':>5}"
    )
    for r in results.values():
        pv = "-" if r.passage_visible_calls is None else f"{r.passage_visible_calls:.0f}"
        rs = "-" if r.readable_sources_calls is None else f"{r.readable_sources_calls:.1f}"
        print(
            f"{r.label:<38} {r.queries:4d} {r.p50_ms:9.2f} {r.p95_ms:9.2f} {r.mean_ms:9.2f}"
            f" {r.p50_x_owner:7.2f}x {r.p95_x_owner:7.2f}x {r.docs_mean:5.1f}"
            f" {r.same_as_owner:5.0%} {pv:>7} {rs:>5}"
        )
    own, rls_own = results["owner"], results["owner_rls"]
    readable, tenant, everyone = results["readable"], results["tenant"], results["all_rls"]
    line = (
        f"k={k}: readable_sources path {readable.p50_ms - own.p50_ms:+.2f} ms p50 "
        f"({readable.p50_x_owner:.2f}x); per-row passage_visible "
        f"{everyone.p50_ms - rls_own.p50_ms:+.2f} ms ({everyone.p50_x_owner:.2f}x) with every "
        f"row visible, {tenant.p50_ms - rls_own.p50_ms:+.2f} ms ({tenant.p50_x_owner:.2f}x) "
        f"with 1/3 visible"
    )
    every = [r.case for r in (tenant, everyone) if (r.passage_visible_calls or 0) >= 0.9 * passages]
    if every:
        line += (
            f"; {' and '.join(every)} called passage_visible for every one of the "
            f"{passages} passages (no index scan)"
        )
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the source table")
    parser.add_argument("--queries", type=int, default=200, help="timed queries at most, k<=10")
    parser.add_argument(
        "--large-queries", type=int, default=100, help="timed queries at most, k > 10"
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries first, at most")
    parser.add_argument(
        "--budget", type=float, default=45, help="seconds per database and k (then stop early)"
    )
    parser.add_argument("--min-queries", type=int, default=3, help="timed queries at least")
    parser.add_argument("--k", default="10,100", help="comma-separated values of k")
    parser.add_argument("--seed", type=int, default=1, help="of the query vectors")
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / ".tmp" / "bench-access-pgdata", help="(its own)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    ks = [int(k) for k in args.k.split(",") if k.strip()]

    data_dir: Path = args.data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # A server started by root runs as its own system user, which must reach the directory.
    data_dir.parent.chmod(0o755)
    rng = np.random.default_rng(args.seed)
    order = np.random.default_rng(args.seed + 1)
    tag = uuid.uuid4().hex[:8]
    reader, tenant, everyone = (f"bench_{tag}_{r}" for r in ("reader", "tenant", "all"))
    cases = [
        Case("owner", "owner (no RLS on chunks)", PLAIN_DB, "owner", None),
        Case("readable", "readable_sources (table without RLS)", PLAIN_DB, "owner", reader),
        Case("owner_rls", "owner, copy with RLS on tickets", RLS_DB, "owner_rls", None),
        Case("tenant", "passage_visible, 1/3 of rows visible", RLS_DB, "owner_rls", tenant),
        Case("all_rls", "passage_visible, every row visible", RLS_DB, "owner_rls", everyone),
    ]

    started_all = time.perf_counter()
    dsn = server.start(data_dir)
    admin = with_database(dsn, "postgres")
    out: dict[str, Any] = {}
    per_k: dict[int, tuple[float, dict[str, Result]]] = {}
    violations: list[str] = []
    try:
        with roles(admin, [reader, tenant, everyone]):
            out = setup(admin, args.rows, reader, tenant, everyone)
            out.update(
                queries=args.queries,
                large_queries=args.large_queries,
                warmup=args.warmup,
                budget_s=args.budget,
                seed=args.seed,
                results=[],
            )
            print(f"CPU: {out['cpu']} ({out['cpus']} logical CPUs)")
            print(
                f"PostgreSQL {out['postgres']} (shared_buffers {out['shared_buffers']}), "
                f"pgvector {out['pgvector']}, Python {out['python']}"
            )
            print(
                f"rows {args.rows}, passages {out['passages']} (1-3 per document), dim {DIM}; "
                f"per database and k: up to {args.queries} queries (k<=10) or "
                f"{args.large_queries}, after up to {args.warmup} warm-up, "
                f"{args.budget:.0f} s budget"
            )
            print(
                f"setup: migrate {out['migrate_s']:.1f} s, load {out['load_s']:.1f} s "
                f"(HNSW index build {out['index_build_s']:.1f} s)",
                flush=True,
            )
            dsns = {
                c.name: (
                    with_database(dsn, c.database)
                    if c.role is None
                    else make_conninfo(with_database(dsn, c.database), user=c.role)
                )
                for c in cases
            }
            # Measured before track_functions is turned on for the roles.
            out["passage_visible_us"] = passage_visible_cost(dsns["tenant"], 5000)
            with psycopg.connect(admin, autocommit=True) as conn:
                for c in cases:
                    if c.role is not None:
                        conn.execute(
                            sql.SQL(
                                "ALTER ROLE {} IN DATABASE {} SET track_functions = 'all'"
                            ).format(sql.Identifier(c.role), sql.Identifier(c.database))
                        )
            conns = {name: psycopg.connect(d) for name, d in dsns.items()}
            try:
                for k in ks:
                    count = args.queries if k <= 10 else args.large_queries
                    queries = [vector_text(v) for v in unit_vectors(rng, args.warmup + count)]
                    started = time.perf_counter()
                    runs: dict[str, Run] = {}
                    # One database at a time (see the module's docstring).
                    for database in (PLAIN_DB, RLS_DB):
                        group = {c.name: conns[c.name] for c in cases if c.database == database}
                        runs.update(
                            measure(
                                group,
                                queries,
                                k,
                                args.warmup,
                                args.budget,
                                args.min_queries,
                                order,
                            )
                        )
                    took = time.perf_counter() - started
                    per_k[k] = (
                        took,
                        {c.name: result(c, k, runs[c.name], runs[c.baseline]) for c in cases},
                    )
                    # Not timing: what the tenant was shown.
                    if any(int(key) % 3 for found in runs["tenant"].keys for key in found):
                        violations.append(f"k={k}: the tenant was shown another tenant's rows")
            finally:
                for conn in conns.values():
                    conn.close()
    finally:
        server.stop(data_dir)

    summary = []
    for k in ks:
        took, results = per_k[k]
        summary.append(print_results(k, took, results, out["passages"]))
        out["results"].extend(asdict(r) for r in results.values())
    print("\nsummary (p50 against the owner's p50 in the same database):")
    for line in summary:
        print("  " + line)
    print(f"  one passage_visible() call as the tenant: {out['passage_visible_us']:.1f} us")
    print(
        "columns: n = queries timed, docs = documents returned, =own = queries whose "
        "documents (in order) were the owner's, pv/q and rs/q = passage_visible and "
        "readable_sources calls per search"
    )
    print(f"total {time.perf_counter() - started_all:.0f} s")
    for line in violations:
        print("VISIBILITY: " + line)
    out["violations"] = violations
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
