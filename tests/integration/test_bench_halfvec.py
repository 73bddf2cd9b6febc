"""The bench's opt-in halfvec row on 2,000 rows: complete, sane figures for both types.

Behaviour only, never timing (the machine is shared): every figure is there for
vector and halfvec, sizes are positive and halfvec's table is the smaller, recall is a
share, both searches went through their HNSW index (the row refuses to time anything
else), the numpy ground truth agrees with PostgreSQL's own exact scan, and the scratch
schema is gone afterwards.  (The vectors themselves: tests/unit/test_bench_halfvec.py.)
"""

from __future__ import annotations

import psycopg

from indexer.bench.halfvec import QUERIES, TYPES, base_count, measure
from indexer.bench.scratch import connect_admin
from indexer.embedding import Embedder

ROWS = 2000


def test_halfvec_row_on_a_small_table(database: str, embedder: Embedder) -> None:
    admin = connect_admin(database)
    try:
        r = measure(database, admin, embedder, ROWS, schema="indexer_bench_halfvec", repeats=2)
    finally:
        admin.close()

    assert (r["rows"], r["dim"], r["queries"], r["k"], r["ef_search"]) == (
        ROWS,
        384,
        QUERIES,
        10,
        100,
    )
    assert r["index"] == {
        "vector": {"type": "hnsw", "m": 16, "ef_construction": 64},
        "halfvec": {"type": "hnsw", "m": 13, "ef_construction": 100},
    }
    assert r["base_texts"] == base_count(ROWS) == 200
    assert set(r["types"]) == set(TYPES) == {"vector", "halfvec"}
    for name, figures in r["types"].items():
        assert figures["ops"] == f"{name}_cosine_ops"
        for size in ("heap_bytes", "table_bytes", "indexes_bytes", "hnsw_bytes"):
            assert figures[size] > 0, (name, size)
        # pg_indexes_size counts the primary key too.
        assert figures["indexes_bytes"] > figures["hnsw_bytes"]
        # Two rounds: each index built twice (dropped and built again), the median kept.
        assert len(figures["builds_s"]) == len(figures["loadavg_before_builds"]) == 2
        assert len(figures["recall_by_build"]) == 2
        assert all(0.0 <= r <= 1.0 for r in figures["recall_by_build"])
        assert abs(figures["recall_at_10"] - sum(figures["recall_by_build"]) / 2) <= 1e-4
        assert figures["build_s"] > 0
        assert abs(figures["build_s"] - sum(figures["builds_s"]) / 2) <= 0.01
        assert figures["graph_fit"] is True and figures["spilled_after"] is None
        assert 0.0 <= figures["min_recall_at_10"] <= figures["recall_at_10"] <= 1.0
        assert 0 < figures["p50_ms"] <= figures["p95_ms"]
    vector, halfvec = r["types"]["vector"], r["types"]["halfvec"]
    # Two bytes a dimension instead of four: the heap is about half.
    assert 0.4 <= halfvec["heap_bytes"] / vector["heap_bytes"] <= 0.6
    assert set(r["ratios"]) == {"table", "hnsw_index", "build", "p50", "p95"}
    assert r["ratios"]["hnsw_index"] == round(halfvec["hnsw_bytes"] / vector["hnsw_bytes"], 4)
    assert all(v > 0 for v in r["ratios"].values())
    assert r["runs"] == 2
    assert r["recall_diff"] == round(halfvec["recall_at_10"] - vector["recall_at_10"], 4)
    # A graph of 2,000 rows searched 100 wide finds nearly everything.
    assert vector["recall_at_10"] >= 0.9
    assert 0.9 <= r["rounding_recall_at_10"] <= 1.0
    assert r["exact_check"] == "3/3 queries: numpy top-10 = PostgreSQL seq scan"
    assert r["pgvector"]

    with psycopg.connect(database) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'indexer_bench%'"
        ).fetchall()
    assert left == []
