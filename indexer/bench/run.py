"""One bench run: set up, run the chosen sections in order, print the report.

Eleven measurements, each the median of several runs (the model switch: one run), printed
as one table (and written as JSON with ``--json``):

1. model throughput (ONNX Runtime, the daemon's :class:`~indexer.embedding.Embedder`);
2. the same texts through sentence-transformers + PyTorch, when installed, for the
   speed-up and the cosine agreement;
3. end-to-end backfill by the real :class:`~indexer.worker.Worker`, against (1);
4. INSERT -> vector committed latency of an idle `indexer run` (NOTIFY wake-up);
5. search latency (query embedding + HNSW top-10) and recall@10 against exact search;
6. peak RSS of `indexer run --once` draining rows of 1 MB of text each;
7. the cost of one claim with few and with many already-embedded rows;
8. the vector cache: re-ingest, duplicates, no repeats, cached INSERT latency, lookups;
9. chunked documents: ingestion against the raw model, re-import, a paragraph's update;
10. switching models (fp32 to int8) while queries and inserts run: answers checked,
    search and INSERT latency before, during the fill and after, fill rate, switch time;
11. a remote model served by another indexer's ``/v1/embeddings`` against the in-process
    model, draining the same rows, and the same drain through a throttling proxy.

and, opt-in: (``--halfvec-rows N``) pgvector's halfvec(384) against vector(384): sizes,
HNSW build, search latency and recall on the same N rows; (``--fill-rows N``) a model
filled in the background against the raw model on the same N rows, and the daemon's peak
RSS with two models loaded against each alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from indexer.bench.backfill import bench_backfill
from indexer.bench.cache import bench_cache
from indexer.bench.claim import bench_claim
from indexer.bench.common import say
from indexer.bench.context import Context
from indexer.bench.corpus import build_corpus
from indexer.bench.daemons import stop_children
from indexer.bench.documents import bench_documents
from indexer.bench.fill import bench_fill
from indexer.bench.halfvec import bench_halfvec
from indexer.bench.latency import bench_latency
from indexer.bench.machine import loadavg, machine_info, versions
from indexer.bench.memory import bench_memory
from indexer.bench.model import bench_model
from indexer.bench.plan import Plan, chosen_sections
from indexer.bench.remote import bench_remote
from indexer.bench.report import render
from indexer.bench.scratch import connect_admin
from indexer.bench.search import bench_search
from indexer.bench.switch import bench_switch
from indexer.bench.targets import evaluate
from indexer.db.connect import resolve_dsn
from indexer.embedding import load_embedder
from indexer.exceptions import IndexerError, first_line
from indexer.settings import Settings

Section = Callable[[Context, dict[str, Any]], None]
RUNNERS: dict[str, Section] = {
    "model": bench_model,
    "backfill": bench_backfill,
    "latency": bench_latency,
    "search": bench_search,
    "memory": bench_memory,
    "claim": bench_claim,
    "cache": bench_cache,
    "documents": bench_documents,
    "halfvec": bench_halfvec,
    "switch": bench_switch,
    "fill": bench_fill,
    "remote": bench_remote,
}


def _run_sections(ctx: Context, chosen: tuple[str, ...], results: dict[str, Any]) -> bool:
    """Run each chosen section; True if one failed."""
    failed = False
    for name in chosen:
        say(f"{name} ...")
        start = time.perf_counter()
        try:
            RUNNERS[name](ctx, results)
        except (IndexerError, OSError, RuntimeError, ValueError) as exc:
            # One broken section must not cost the figures of the others; the
            # failure is printed in full and makes the exit status 1.
            failed = True
            traceback.print_exc()
            results[name] = {"error": first_line(exc)}
            if name == "model":
                results["reference"] = {"skipped": "the model section failed"}
        say(f"{name} done in {time.perf_counter() - start:.1f} s")
    return failed


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`indexer bench`: 0 when every chosen section ran, 1 when one failed."""
    plan = Plan.from_args(args)
    chosen = chosen_sections(args.only, plan)
    began = time.perf_counter()
    dsn = resolve_dsn(settings)
    admin = connect_admin(dsn)
    embedder = load_embedder(settings)
    corpus = build_corpus(
        embedder.count_tokens, plan.short, plan.mixed, plan.queries, plan.backfill
    )
    report: dict[str, Any] = {
        "machine": machine_info(),
        "versions": versions(admin),
        "plan": dataclasses.asdict(plan),
        "results": {},
    }
    say(
        f"{report['machine']['cpu']}, {report['machine']['usable_cores']} cores; "
        f"corpus: {len(corpus.short)} short lines, {len(corpus.mixed)} chunks"
    )
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as workdir:
        ctx = Context(args, settings, plan, dsn, admin, embedder, corpus, Path(workdir))
        try:
            failed = _run_sections(ctx, chosen, report["results"])
        finally:
            stop_children(ctx.children)
            admin.close()
    report["targets"] = [dataclasses.asdict(t) for t in evaluate(report["results"])]
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["machine"]["loadavg_end"] = loadavg()
    print(render(report))
    print(f"(bench took {report['seconds']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if failed else 0
