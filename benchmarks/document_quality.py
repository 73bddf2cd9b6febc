"""Retrieval quality of documents through the product: single rows against chunked documents.

    DATABASE_URL=... python benchmarks/document_quality.py [--documents 500] [--max-chars 6000]
        [--cache-dir .tmp/chunking_quality] [--threads 1] [--schema-prefix document_quality]

The corpus and the three query sets (summary, purpose, deep) are those of
``benchmarks/chunking_quality.py`` (its functions, imported): man pages and the Python
documentation topics, each query's relevant document the one it came from.  Where that
script scores numpy vectors, this one goes through the product, on the database of
``DATABASE_URL``, in two scratch schemas it migrates and drops again:

* **single rows**: each document inserted as one row of ``chunks`` (the model reads its
  first 256 tokens), embedded by the real :class:`~indexer.worker.Worker` (``--once``),
  and searched with the product's own search (:meth:`indexer.store.Store.search`, which
  runs ``search_chunks`` on the HNSW index, as ``/search`` does);
* **documents**: the same texts inserted into the built-in ``documents`` table, chunked
  and embedded by the daemon with the default settings (``chunk_tokens`` 128,
  ``chunk_overlap`` 16), searched with ``search_documents`` in SQL (a document scored by
  its best chunk), on a connection set up as the Store sets up its own (``hnsw.ef_search``
  100, pgvector's iterative scan).

For each method and query set it prints recall@1 and recall@10 of the relevant document
(the top 10 results of a search), and how long each step took.  Every query is embedded
by the same :class:`~indexer.embedding.Embedder` the daemon uses (``--threads`` ONNX
threads).  Nothing is cached between runs but the rendered corpus (in ``--cache-dir``,
shared with ``chunking_quality.py``): the point is the product's own path.  A tool for
people, not part of ``make test``; ``benchmarks/document_quality.md`` holds the results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from chunking_quality import (
    KS,
    ROOT,
    Document,
    Query,
    deep_queries,
    load_corpus,
    purpose_queries,
    summary_queries,
)

from indexer.app import DAEMON_CONNECTIONS
from indexer.bench.scratch import connect_admin, migrated_schema
from indexer.db import connect as db
from indexer.embedding import Embedder
from indexer.exceptions import InvalidInput
from indexer.settings import Settings
from indexer.store import Store
from indexer.store.store import EF_SEARCH
from indexer.worker import Worker

#: The results read per query (recall@10 needs the top 10).
TOP = max(KS)
MARKER = "scratch schema of benchmarks/document_quality.py: dropped when it ends"


def _say(message: str) -> None:
    print(f"document_quality: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch(dsn: str, schema: str) -> Iterator[db.Connection]:
    """A freshly migrated schema (and an autocommit connection into it), dropped after:
    the bench's own mechanism, under this script's marker."""
    admin = connect_admin(dsn)
    hint = "this script; choose another prefix with --schema-prefix"
    try:
        with migrated_schema(dsn, admin, schema, marker=MARKER, hint=hint) as conn:
            yield conn
    except InvalidInput as exc:  # a schema not this script's: one line, nothing dropped
        raise SystemExit(f"document_quality: {exc}") from None
    finally:
        admin.close()


def drain(settings: Settings, embedder: Embedder) -> float:
    """Seconds the real Worker takes to embed everything queued (``--once``)."""
    began = time.perf_counter()
    with Store(settings.database_url or "", settings.schema, pool_size=DAEMON_CONNECTIONS) as store:
        Worker(settings, store, embedder).run(once=True)
    return time.perf_counter() - began


def recall(found: Sequence[Sequence[int]], queries: Sequence[Query], k: int) -> float:
    """Share of queries whose relevant document is among the first ``k`` found (NaN
    for an empty set)."""
    if not queries:
        return float("nan")
    hits = sum(q.document in list(f)[:k] for q, f in zip(queries, found, strict=True))
    return hits / len(queries)


def single_rows(
    settings: Settings, embedder: Embedder, corpus: Sequence[Document], queries: np.ndarray
) -> tuple[list[list[int]], dict[str, float]]:
    """Each document one row of chunks; the documents each query finds, best first."""
    times: dict[str, float] = {}
    with scratch(settings.database_url or "", settings.schema) as conn:
        conn.execute(
            "INSERT INTO chunks (content, metadata)"
            " SELECT c, jsonb_build_object('doc', i - 1)"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(c, i)",
            ([d.text for d in corpus],),
        )
        times["embed"] = drain(settings, embedder)
        _check(conn, "SELECT count(*) FROM chunks WHERE state = 'embedded'", len(corpus))
        began = time.perf_counter()
        found = []
        with Store(settings.database_url or "", settings.schema) as store:
            for vector in queries:
                hits = store.search(vector, TOP)
                found.append([int(h.metadata["doc"]) for h in hits])
        times["search"] = time.perf_counter() - began
    return found, times


def chunked_documents(
    settings: Settings, embedder: Embedder, corpus: Sequence[Document], queries: np.ndarray
) -> tuple[list[list[int]], dict[str, float], int]:
    """The documents in the built-in documents table; what search_documents finds."""
    times: dict[str, float] = {}
    with scratch(settings.database_url or "", settings.schema) as conn:
        conn.execute(
            "INSERT INTO documents (content, metadata)"
            " SELECT c, jsonb_build_object('doc', i - 1)"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(c, i)",
            ([d.text for d in corpus],),
        )
        times["embed"] = drain(settings, embedder)
        _check(conn, "SELECT count(*) FROM source_documents WHERE state = 'indexed'", len(corpus))
        chunks = int(_one(conn, "SELECT count(*) FROM chunks WHERE embedding IS NOT NULL"))
        # As the Store sets up each of its connections (indexer/store/store.py).
        conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", (str(EF_SEARCH),))
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', false)")
        began = time.perf_counter()
        found = []
        for vector in queries:
            rows = conn.execute(
                "SELECT metadata FROM search_documents(%s, %s)", (vector, TOP)
            ).fetchall()
            found.append([int(r["metadata"]["doc"]) for r in rows])
        times["search"] = time.perf_counter() - began
    return found, times, chunks


def _one(conn: db.Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return next(iter(row.values()))


def _check(conn: db.Connection, query: str, wanted: int) -> None:
    got = _one(conn, query)
    if got != wanted:
        raise SystemExit(f"the daemon left work undone: {query} gave {got}, not {wanted}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--documents", type=int, default=500, help="man pages (default 500)")
    parser.add_argument(
        "--max-chars", type=int, default=6000, help="characters kept per document (6000)"
    )
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".tmp" / "chunking_quality")
    parser.add_argument("--threads", type=int, default=1, help="model threads (default 1)")
    parser.add_argument(
        "--schema-prefix",
        default="document_quality",
        help="scratch schemas PREFIX_single and PREFIX_documents (dropped at the end)",
    )
    args = parser.parse_args(argv)
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        parser.error("set DATABASE_URL to the database to measure on")

    began = time.perf_counter()
    settings = Settings(
        database_url=dsn, threads=args.threads, model_cache=ROOT / ".tmp" / "models"
    )
    embedder = Embedder(cache_dir=settings.model_cache, threads=args.threads)
    corpus = load_corpus(args.cache_dir, args.documents, args.max_chars)
    sets = {
        "summary": summary_queries(corpus),
        "purpose": purpose_queries(corpus),
        "deep": deep_queries(corpus, embedder),
    }
    _say(
        f"{len(corpus)} documents; queries: "
        + ", ".join(f"{len(q)} {name}" for name, q in sets.items())
    )
    step = time.perf_counter()
    vectors = {name: embedder.embed([q.text for q in qs]) for name, qs in sets.items()}
    query_s = time.perf_counter() - step
    every = np.concatenate(list(vectors.values()))
    _say(f"queries embedded in {query_s:.0f} s")

    single, single_times = single_rows(
        dataclasses.replace(settings, schema=f"{args.schema_prefix}_single"),
        embedder,
        corpus,
        every,
    )
    _say(f"single rows: embedded in {single_times['embed']:.0f} s")
    chunked, chunked_times, chunks = chunked_documents(
        dataclasses.replace(settings, schema=f"{args.schema_prefix}_documents"),
        embedder,
        corpus,
        every,
    )
    _say(f"documents: {chunks} chunks embedded in {chunked_times['embed']:.0f} s")

    columns = [f"{name} R@{k}" for name in sets for k in KS]
    print("| method | vectors | " + " | ".join(columns) + " |")
    print("|" + "---|" * (2 + len(columns)))
    for label, found, count in (
        ("single rows, search_chunks", single, len(corpus)),
        (
            f"documents {settings.chunk_tokens}:{settings.chunk_overlap}, search_documents",
            chunked,
            chunks,
        ),
    ):
        cells: list[str] = []
        offset = 0
        for queries in sets.values():
            part = found[offset : offset + len(queries)]
            offset += len(queries)
            cells.extend(f"{100 * recall(part, queries, k):.1f}" for k in KS)
        print(f"| {label} | {count} | " + " | ".join(cells) + " |")
    print()
    print("| step | time |")
    print("|---|---|")
    print(f"| embed the queries ({len(every)}) | {query_s:.0f} s |")
    print(f"| single rows: drain ({len(corpus)} rows) | {single_times['embed']:.0f} s |")
    print(f"| single rows: {len(every)} searches | {single_times['search']:.1f} s |")
    print(f"| documents: drain ({chunks} chunks) | {chunked_times['embed']:.0f} s |")
    print(f"| documents: {len(every)} searches | {chunked_times['search']:.1f} s |")
    print(f"| all (incl. corpus, migrations) | {time.perf_counter() - began:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
