"""Recall on the project's quality corpus, for ``int8_quality.py --quality``.

The corpus and query sets are ``benchmarks/chunking_quality.py``'s (its functions,
imported; the rendered corpus is shared with it in ``.tmp/chunking_quality``): man pages
and the Python documentation topics; summary, purpose and deep queries, each query's
relevant document the one it came from.  Two ways to search, as that script's first
rows: each document one row (the model reads its first 256 tokens), and its 128:16
chunks (the daemon's defaults) with a document scored by its best chunk.  Scores are
exact (numpy), so the figures compare the vectors and nothing else.  The cosine columns
compare every text of the corpus (documents, chunks, queries) with its fp32 vector.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from chunking_quality import (
    KS,
    ROOT,
    chunk_corpus,
    deep_queries,
    load_corpus,
    purpose_queries,
    recall,
    similarities,
    summary_queries,
)

from indexer.embedding import Embedder

Floats = npt.NDArray[np.float32]
MAX_CHARS = 6000
CHUNKS = (128, 16)


def _say(message: str) -> None:
    print(f"int8: {message}", file=sys.stderr, flush=True)


def embed_cached(embedder: Embedder, texts: Sequence[str], cache: Path) -> Floats:
    """The vectors of ``texts`` by ``embedder``'s graph, computed once (by graph digest:
    the two int8 variants share a model name, not a graph)."""
    digest = hashlib.sha256(embedder.cache_key.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    path = cache / f"vectors-{digest.hexdigest()[:24]}.npy"
    if path.exists():
        vectors: Floats = np.load(path)
        return vectors
    began = time.perf_counter()
    vectors = embedder.embed(texts)
    _say(f"embedded {len(texts)} texts in {time.perf_counter() - began:.0f} s")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


def print_retrieval(rows: Sequence[tuple[str, Embedder]], args: argparse.Namespace) -> None:
    """One table row per (config, way to search): recall@1/@10 of every query set."""
    reference = rows[0][1]
    corpus = load_corpus(ROOT / ".tmp" / "chunking_quality", args.documents, MAX_CHARS)
    sets = {
        "summary": summary_queries(corpus),
        "purpose": purpose_queries(corpus),
        "deep": deep_queries(corpus, reference),
    }
    chunked = chunk_corpus(corpus, reference, *CHUNKS)
    cache: Path = args.cache_dir / "vectors"
    print(
        f"\nquality corpus: {len(corpus)} documents, {len(chunked.texts)} chunks "
        f"({CHUNKS[0]}:{CHUNKS[1]}); queries: "
        + ", ".join(f"{len(q)} {name}" for name, q in sets.items())
        + "; recall in percent of the relevant document in the top 1 / top 10"
    )
    columns = [f"{name} R@{k}" for name in sets for k in KS]
    print(f"| config | documents as | {' | '.join(columns)} | cos min | cos median |")
    print("|" + "---|" * (4 + len(columns)))
    everything: Floats | None = None
    for name, embedder in rows:
        single = embed_cached(embedder, [d.text for d in corpus], cache)
        chunks = embed_cached(embedder, chunked.texts, cache)
        queries = {s: embed_cached(embedder, [q.text for q in qs], cache) for s, qs in sets.items()}
        vectors = np.concatenate([single, chunks, *queries.values()])
        everything = vectors if everything is None else everything
        cos = (vectors * everything).sum(axis=1)  # to fp32 (the first row), text by text
        relevant = {s: [q.document for q in qs] for s, qs in sets.items()}
        ways = {
            "one row": {s: (queries[s] @ single.T).astype(np.float64) for s in sets},
            "best chunk": {s: similarities(queries[s], chunks, chunked, single).best for s in sets},
        }
        for way, scores in ways.items():
            cells = [f"{100 * recall(scores[s], relevant[s], k):.1f}" for s in sets for k in KS]
            agreement = f"{cos.min():.4f} | {np.median(cos):.5f}"
            print(f"| {name} | {way} | {' | '.join(cells)} | {agreement} |", flush=True)
