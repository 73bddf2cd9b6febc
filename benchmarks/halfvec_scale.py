"""pgvector's halfvec(384) against vector(384) at a million rows: the bench's opt-in
halfvec row alone, at the size its target is set at.

    python benchmarks/halfvec_scale.py [--rows 1000000] [--json .tmp/halfvec.json]

(without DATABASE_URL, the embedded server of ``indexer dsn``; INDEXER_DATA_DIR picks
its data directory).  It is ``indexer bench --only halfvec --halfvec-rows N``: the same
settings and options (``--repeats``, ``--bench-schema``, ...), the same report, its
machine and versions, and the target judged at 1M rows.  It needs about 6 GB of free
disk, about 3 GB of memory for the server's index builds (``maintenance_work_mem``) and
1.5 GB for the vectors in this process; on two shared cores it took about half an
hour, nearly all of it six HNSW builds (three of each type, ``--repeats``).  The
figures are in docs/benchmarks/performance.md ("halfvec vs vector").  A tool for
people, not part of ``make test``.
"""

from __future__ import annotations

import argparse
import sys

from indexer.cli import main as indexer_main

ROWS = 1_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Other options are passed to `indexer bench`.",
    )
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows (default {ROWS})")
    args, rest = parser.parse_known_args(argv)
    return indexer_main(["bench", "--only", "halfvec", "--halfvec-rows", str(args.rows), *rest])


if __name__ == "__main__":
    sys.exit(main())
