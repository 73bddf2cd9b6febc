"""A filtered search returns k hits whenever k rows (or documents) match, on pgvector
0.8 (its iterative scan) and 0.7 (no such scan: the functions widen ef_search, then read
exactly).  Run it on a 0.7 server with INDEXER_TEST_POSTGRES=url."""

from __future__ import annotations

import numpy as np

from indexer.db.connect import Connection
from tests.integration.test_sources_sql import apply_changes

DIM = 384


def _vectors(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((n, DIM)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return ["[" + ",".join(f"{x:.6f}" for x in row) + "]" for row in out]


def test_a_selective_filter_still_returns_k_rows(conn: Connection) -> None:
    vectors = _vectors(2000, seed=1)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO chunks (content, metadata, embedding) VALUES (%s, %s, %s)",
            [
                (f"row {i}", '{"kind": "rare"}' if i % 40 == 0 else '{"kind": "common"}', v)
                for i, v in enumerate(vectors)
            ],
        )
    query = _vectors(1, seed=2)[0]
    rows = conn.execute(
        'SELECT id, metadata FROM search_chunks(%s::vector, 10, \'{"kind": "rare"}\')',
        (query,),
    ).fetchall()
    assert len(rows) == 10
    assert all(r["metadata"] == {"kind": "rare"} for r in rows)
    exact = conn.execute(
        'SELECT id FROM chunks WHERE metadata @> \'{"kind": "rare"}\''
        " ORDER BY (embedding <=> %s::vector) + 0 LIMIT 10",
        (query,),
    ).fetchall()
    # The index is approximate: most of the exact ten, not necessarily all, in order.
    assert len({r["id"] for r in rows} & {r["id"] for r in exact}) >= 6
    assert (
        len(conn.execute("SELECT * FROM search_chunks(%s::vector, 10)", (query,)).fetchall()) == 10
    )


def test_a_selective_filter_still_returns_k_documents(conn: Connection) -> None:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 400) g")
    apply_changes(conn)
    vectors = _vectors(2000, seed=3)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO chunks (content, metadata, embedding, document_id, source_id, doc_key,"
            " position, char_start, char_end)"
            " SELECT %s, %s, %s, d.id, d.source_id, d.doc_key, %s, 0, 1"
            " FROM source_documents d JOIN sources s ON s.id = d.source_id"
            " WHERE s.name = 'public.notes' AND d.doc_key = %s",
            [
                (
                    f"passage {i}",
                    '{"kind": "rare"}' if (i % 400) % 40 == 0 else '{"kind": "common"}',
                    v,
                    i // 400,
                    str(i % 400 + 1),
                )
                for i, v in enumerate(vectors)
            ],
        )
    query = _vectors(1, seed=4)[0]
    docs = conn.execute(
        'SELECT key FROM search_documents(%s::vector, 10, \'{"kind": "rare"}\')', (query,)
    ).fetchall()
    assert len(docs) == 10  # 10 of the 10 documents whose passages match
    assert len({d["key"] for d in docs}) == 10
