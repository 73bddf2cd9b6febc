"""The ``indexer bench`` command's options and entry point.

Only argparse and :mod:`indexer.bench.plan` are imported here: ``indexer.cli`` builds
this parser for every command, and the measuring code (numpy, ONNX Runtime, psycopg)
loads only when the bench runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.bench.plan import OPT_IN, SECTIONS

if TYPE_CHECKING:
    from indexer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and 2 runs (about a minute; CI)"
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures here")
    parser.add_argument(
        "--repeats", type=int, help="runs per figure, the median is reported (default 3; quick 2)"
    )
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help=f"comma-separated subset of: {', '.join(SECTIONS + tuple(OPT_IN))} (default: all "
        "but the opt-in ones, which run when their option is given)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the sentence-transformers comparison even when it is installed",
    )
    parser.add_argument(
        "--search-rows", type=int, help="rows in the search table (default 100000; quick 3000)"
    )
    parser.add_argument(
        "--search-copies",
        type=int,
        default=5,
        help="search rows made from each real embedding by adding noise (default 5); "
        "large values make tight clusters of near-duplicates, which HNSW handles badly",
    )
    parser.add_argument(
        "--claim-rows",
        type=int,
        help="embedded rows in the large claim table (default 1000000; quick 20000)",
    )
    parser.add_argument(
        "--halfvec-rows",
        type=int,
        metavar="N",
        help="opt-in: compare pgvector's halfvec(384) with vector(384) on N rows (sizes, "
        "HNSW build, search latency and recall; benchmarks/halfvec_scale.py runs 1000000)",
    )
    parser.add_argument(
        "--fill-rows",
        type=int,
        metavar="N",
        help="opt-in: a model filled in the background on N rows against the raw model, "
        "and the daemon's peak RSS with two models loaded against each alone",
    )
    parser.add_argument(
        "--switch-rows",
        type=int,
        help="chunks of the model switch's corpus (default 10000; quick 1000; its target "
        "is set at 100000)",
    )
    parser.add_argument(
        "--remote-rows",
        type=int,
        metavar="N",
        help="rows of each drain of the remote row: in-process, through a remote model "
        "served by another indexer's /v1/embeddings, and throttled (default 2000; quick 192)",
    )
    parser.add_argument(
        "--bench-schema",
        default="indexer_bench",
        help="prefix of the scratch schemas (default indexer_bench); they are dropped at the end",
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run the chosen sections, print the table; 1 if a section failed."""
    from indexer.bench.run import run

    return run(args, settings)
