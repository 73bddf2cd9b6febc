"""What a source's triggers cost the application's statements, before and after
migration 0008, side by side in one run.

    DATABASE_URL=... python benchmarks/trigger_cost.py [--rows 50000] [--repeats 3]

(without DATABASE_URL, the embedded server of ``indexer dsn``).  Three scratch schemas
of the same database: ``trigger_cost_plain`` (a table, no source), ``trigger_cost_0007``
(the indexer at revision 0007: the triggers of migration 0006 queue and delete
documents in the application's transaction) and ``trigger_cost_head`` (the triggers
append to ``source_changes``; the daemon applies them).  Each has the table ``notes
(id bigint primary key, body text, hits int)``, registered as a source where there is an
indexer.  Each statement runs on ``--rows`` rows in one transaction, ``--repeats``
times; the script prints the median seconds of each, and for ``head`` also what the
daemon's ``apply_source_changes`` then took (the work moved out of the application's
transaction).  With ``--serializable``, the application's statements run in
SERIALIZABLE transactions.  The schemas are dropped at the end.  A tool for people,
not part of ``make test``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from psycopg import sql

from indexer.db import connect as db
from indexer.db import migrate

SCHEMAS = {"plain": None, "0007": "0007", "head": "head"}
STATEMENTS = {
    "INSERT": "INSERT INTO notes SELECT i, 'note ' || i, 0 FROM generate_series(1, %(rows)s) i",
    "UPDATE of another column": "UPDATE notes SET hits = hits + 1",
    "UPDATE of the text": "UPDATE notes SET body = body || '.'",
    "DELETE": "DELETE FROM notes",
}


def _dsn() -> str:
    dsn = os.environ.get("DATABASE_URL")
    if dsn:
        return dsn
    out = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "dsn"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def _schema(name: str) -> str:
    return f"trigger_cost_{name}"


def _setup(dsn: str, name: str, revision: str | None) -> None:
    schema = _schema(name)
    with db.connect(dsn, "public", autocommit=True, vector=False) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    if revision is not None:
        migrate.upgrade(dsn, schema, revision)
    with db.connect(dsn, schema, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text, hits int)")
        if revision is not None:
            conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
            conn.execute("UPDATE sources SET backfill_done_at = now()")


def _apply(conn: db.Connection) -> float:
    start = time.perf_counter()
    while True:
        row = conn.execute("SELECT apply_source_changes(100000) AS n").fetchone()
        if row is None or not row["n"]:
            return time.perf_counter() - start


def _timed(conn: db.Connection, statement: str, rows: int, serializable: bool) -> float:
    conn.autocommit = False
    if serializable:
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    start = time.perf_counter()
    conn.execute(statement, {"rows": rows})
    conn.commit()
    elapsed = time.perf_counter() - start
    conn.autocommit = True
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serializable", action="store_true")
    args = parser.parse_args()
    dsn = _dsn()
    for name, revision in SCHEMAS.items():
        _setup(dsn, name, revision)
    times: dict[tuple[str, str], list[float]] = {}
    applied: dict[str, list[float]] = {}
    try:
        for _ in range(args.repeats):
            for name in SCHEMAS:  # interleaved, so that load drifts hit all three alike
                with db.connect(dsn, _schema(name), autocommit=True) as conn:
                    conn.execute("TRUNCATE notes")
                    if name == "head":
                        _apply(conn)
                    for label, statement in STATEMENTS.items():
                        times.setdefault((name, label), []).append(
                            _timed(conn, statement, args.rows, args.serializable)
                        )
                        if name == "head":
                            applied.setdefault(label, []).append(_apply(conn))
    finally:
        with db.connect(dsn, "public", autocommit=True, vector=False) as conn:
            for name in SCHEMAS:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(_schema(name))
                    )
                )
    print(
        f"{args.rows} rows a statement, median of {args.repeats}"
        f"{', SERIALIZABLE' if args.serializable else ''} (seconds)"
    )
    print(f"{'statement':<26} {'no source':>10} {'0007':>10} {'head':>10} {'applied':>10}")
    for label in STATEMENTS:
        cells = [statistics.median(times[(name, label)]) for name in SCHEMAS]
        print(
            f"{label:<26} "
            + " ".join(f"{c:>10.3f}" for c in cells)
            + f" {statistics.median(applied[label]):>10.3f}"
        )


if __name__ == "__main__":
    main()
