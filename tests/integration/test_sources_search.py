"""Migration 0005 in SQL: search_documents over document chunks written by hand.

Vectors are random unit vectors (numpy, seeded): the expected answer is computed here
by brute force, and compared with what the function returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from indexer.db.connect import Connection

from .test_sources_sql import add_source, apply_changes

DIM = 384


def unit(v: np.ndarray) -> np.ndarray:
    norm: np.ndarray = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.asarray(v / norm)


def text(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7f}" for x in v) + "]"


class Corpus:
    """Documents of a source and their chunks, with the vectors kept for the oracle."""

    def __init__(self, conn: Connection, table: str) -> None:
        self.conn = conn
        self.table = table
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, body text, topic text)").format(
                sql.Identifier(table)
            )
        )
        self.source = add_source(conn, table, None, ["body"], ["topic"])
        self.vectors: dict[tuple[str, str], list[np.ndarray]] = {}

    def add(self, key: int, topic: str, vectors: np.ndarray) -> None:
        self.conn.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, 'text', %s)").format(sql.Identifier(self.table)),
            (key, topic),
        )
        apply_changes(self.conn)
        doc = self.conn.execute(
            "SELECT id FROM source_documents WHERE source_id = %s AND doc_key = %s",
            (self.source, str(key)),
        ).fetchone()
        assert doc is not None
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO chunks (content, metadata, embedding, document_id, source_id,"
                " doc_key, position, char_start, char_end)"
                " VALUES (%s, %s, %s::vector, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        f"{self.table} {key} passage {p}",
                        Jsonb({"topic": topic}),
                        text(v),
                        doc["id"],
                        self.source,
                        str(key),
                        p,
                        p * 100,
                        p * 100 + 99,
                    )
                    for p, v in enumerate(vectors)
                ],
            )
        self.vectors[(f"public.{self.table}", str(key))] = list(vectors)


def expected(
    corpora: list[Corpus], query: np.ndarray, k: int, passages: int, topic: str | None = None
) -> list[tuple[str, str, list[int]]]:
    """(source, key, positions of the best passages) of the k best documents."""
    docs = []
    for corpus in corpora:
        for (source, key), vectors in corpus.vectors.items():
            scores = [float(v @ query) for v in vectors]
            order = sorted(range(len(scores)), key=lambda p: -scores[p])
            docs.append((scores[order[0]], source, key, order[:passages]))
    docs.sort(key=lambda d: -d[0])
    return [(s, key, best) for _, s, key, best in docs[:k]]


def search(conn: Connection, query: np.ndarray, **args: Any) -> list[dict[str, Any]]:
    named = [
        sql.SQL(", {} => {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in args
    ]
    statement = sql.SQL("SELECT * FROM search_documents({}::vector{})").format(
        sql.Placeholder("query"), sql.SQL("").join(named)
    )
    return conn.execute(statement, {"query": text(query), **args}).fetchall()


@pytest.fixture
def corpora(conn: Connection) -> list[Corpus]:
    rng = np.random.default_rng(0)
    notes, pages = Corpus(conn, "notes"), Corpus(conn, "pages")
    for key in range(1, 9):
        notes.add(key, "even" if key % 2 == 0 else "odd", unit(rng.standard_normal((5, DIM))))
        pages.add(key, "even" if key % 2 == 0 else "odd", unit(rng.standard_normal((3, DIM))))
    conn.execute(
        "INSERT INTO chunks (content, embedding) VALUES ('a row of its own', %s::vector)",
        (text(unit(rng.standard_normal(DIM))),),
    )
    return [notes, pages]


def test_the_k_best_documents_with_their_best_passages(
    conn: Connection, corpora: list[Corpus]
) -> None:
    query = unit(np.random.default_rng(1).standard_normal(DIM))
    rows = search(conn, query, k=5, max_passages=2)
    assert [(r["source"], r["key"], [p["position"] for p in r["passages"]]) for r in rows] == (
        expected(corpora, query, 5, 2)
    )
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        best = row["passages"][0]
        assert (row["position"], row["content"], row["char_start"], row["char_end"]) == (
            best["position"],
            best["content"],
            best["position"] * 100,
            best["position"] * 100 + 99,
        )
        assert row["score"] == pytest.approx(best["score"])
        assert [p["score"] for p in row["passages"]] == sorted(
            (p["score"] for p in row["passages"]), reverse=True
        )
        assert row["metadata"] == {"topic": "even" if int(row["key"]) % 2 == 0 else "odd"}
    # The defaults: k 10, up to three passages (among the chunks read nearest first).
    rows = search(conn, query)
    assert len(rows) == 10
    assert {len(r["passages"]) for r in rows} <= {1, 2, 3}
    assert max(len(r["passages"]) for r in rows) == 3


def test_filters_of_metadata_and_source(conn: Connection, corpora: list[Corpus]) -> None:
    query = unit(np.random.default_rng(2).standard_normal(DIM))
    rows = search(conn, query, k=4, filter=Jsonb({"topic": "even"}))
    assert len(rows) == 4 and {int(r["key"]) % 2 for r in rows} == {0}
    rows = search(conn, query, k=20, source_name="public.pages", max_passages=1)
    assert [(r["source"], r["key"], [p["position"] for p in r["passages"]]) for r in rows] == (
        expected([corpora[1]], query, 20, 1)
    )
    assert len(rows) == 8
    assert search(conn, query, k=0) == []
    with pytest.raises(psycopg.errors.UndefinedObject, match="no source named nowhere"):
        search(conn, query, source_name="nowhere")


@pytest.fixture
def crowded(conn: Connection, pgvector_08: None) -> tuple[Corpus, np.ndarray]:
    """One document owns the 200 chunks nearest to the query; 30 others, one each."""
    rng = np.random.default_rng(0)
    query = unit(rng.standard_normal(DIM))
    corpus = Corpus(conn, "notes")
    corpus.add(1, "big", unit(query + 0.05 * rng.standard_normal((200, DIM))))
    for key in range(2, 32):
        corpus.add(key, "small", unit(query + 0.3 * rng.standard_normal((1, DIM))))
    conn.execute("SET enable_seqscan = off")  # the HNSW index serves the ORDER BY
    conn.execute("SET hnsw.iterative_scan = off")
    conn.execute("SET hnsw.ef_search = 40")
    return corpus, query


def test_one_document_owning_the_nearest_chunks_does_not_hide_the_others(
    conn: Connection, crowded: tuple[Corpus, np.ndarray]
) -> None:
    corpus, query = crowded
    # What one plain read of the index sees: the big document only.
    nearest = conn.execute(
        "SELECT DISTINCT doc_key FROM (SELECT doc_key FROM chunks"
        " ORDER BY embedding <=> %s::vector LIMIT 40) n",
        (text(query),),
    ).fetchall()
    assert nearest == [{"doc_key": "1"}]
    rows = search(conn, query, k=5)
    assert [(r["source"], r["key"]) for r in rows] == [
        (s, key) for s, key, _ in expected([corpus], query, 5, 3)
    ]
    assert rows[0]["key"] == "1"
    rows = search(conn, query, k=5, filter=Jsonb({"topic": "small"}))
    assert [(r["source"], r["key"]) for r in rows] == [
        (s, key) for s, key, _ in expected([corpus], query, 6, 3)[1:]
    ]
