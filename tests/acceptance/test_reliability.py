"""Never lose or corrupt a row: real daemons (subprocesses), real PostgreSQL, real faults.

Each scenario has a short variant in the default run and a long one marked ``slow``
(`make test-slow`); the long runs' figures are in docs/benchmarks/reliability.md.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from indexer.db import migrate, server
from indexer.db.connect import Connection, connect
from indexer.embedding import Embedder

from ..conftest import TMP
from ..helpers import cli_env, run_cli, start_daemon, wait_until

LEASE = 3.0  # seconds; short so that killed daemons' rows come back quickly


def corpus(n: int, seed: int = 1) -> list[str]:
    """Distinct texts of mixed lengths (a few to a few hundred words)."""
    rng = random.Random(seed)
    words = [
        "postgres",
        "vector",
        "index",
        "daemon",
        "batch",
        "lease",
        "claim",
        "token",
        "model",
        "search",
        "query",
        "row",
        "table",
        "commit",
        "crash",
        "restart",
        "kill",
        "signal",
        "memory",
        "budget",
        "latency",
    ]
    return [
        f"text {i}: " + " ".join(rng.choices(words, k=rng.choice((3, 20, 80, 300))))
        for i in range(n)
    ]


def with_repeats(texts: list[str], seed: int = 7) -> list[str]:
    """As many rows, a third of them repeating another row's text, shuffled: rows that
    the vector cache (or the claim's own deduplication) serves without the model."""
    kept = texts[: len(texts) * 2 // 3]
    mixed = kept + kept[: len(texts) - len(kept)]
    random.Random(seed).shuffle(mixed)
    return mixed


def seed_cache(conn: Connection, embedder: Embedder, texts: list[str]) -> None:
    """Cache the daemons' vectors of ``texts`` before they start (as if embedded once)."""
    vectors = embedder.embed(texts)
    for text, vector in zip(texts, vectors, strict=True):
        conn.execute(
            "INSERT INTO vector_cache (model, hash, embedding)"
            " VALUES (%s, sha256(convert_to(%s, 'UTF8')), %s) ON CONFLICT DO NOTHING",
            (embedder.cache_key, text, vector),
        )


def reused_rows(conn: Connection) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(reused_count), 0) AS n FROM events WHERE kind = 'batch_completed'"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def insert_many(conn: Connection, texts: list[str]) -> None:
    """All rows in one statement, as an application's bulk insert would."""
    conn.execute("INSERT INTO chunks (content) SELECT unnest(%s::text[])", (texts,))


def daemon_env(database: str, model_cache: Path, **extra: str) -> dict[str, str]:
    return cli_env(
        database,
        model_cache,
        INDEXER_LEASE_SECONDS=str(LEASE),
        INDEXER_POLL_INTERVAL="0.5",
        INDEXER_THREADS="1",  # several daemons share two cores
        INDEXER_BATCH_SIZE="32",
        **extra,
    )


def embedded_count(conn: Connection) -> int:
    row = conn.execute("SELECT count(*) AS n FROM chunks WHERE state = 'embedded'").fetchone()
    assert row is not None
    return int(row["n"])


def stop_all(daemons: list[subprocess.Popen[str]], timeout: float = 30) -> list[int | None]:
    for d in daemons:
        if d.poll() is None:
            d.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for d in daemons:
        try:
            codes.append(d.wait(timeout))
        except subprocess.TimeoutExpired:
            d.kill()
            codes.append(None)
    return codes


def check_every_row_once(conn: Connection, embedder: Embedder, expected_rows: int) -> None:
    """Every row embedded, with its current text's vector, in exactly one committed batch."""
    rows = conn.execute("SELECT id, content, embedding, state FROM chunks ORDER BY id").fetchall()
    assert len(rows) == expected_rows
    assert {r["state"] for r in rows} == {"embedded"}
    fresh = embedder.embed([r["content"] for r in rows])
    stored = np.stack([r["embedding"].to_numpy() for r in rows])
    cosine = np.sum(fresh * stored, axis=1)
    assert float(cosine.min()) > 0.9999
    duplicates = conn.execute(
        "SELECT chunk_id, count(*) AS n FROM events, unnest(chunk_ids) AS w(chunk_id)"
        " WHERE kind = 'batch_completed' GROUP BY chunk_id HAVING count(*) > 1"
    ).fetchall()
    assert duplicates == []
    total = conn.execute(
        "SELECT coalesce(sum(row_count), 0) AS n FROM events WHERE kind = 'batch_completed'"
    ).fetchone()
    assert total == {"n": expected_rows}


# -- 1. SIGKILL at any instant ---------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "kills"), [(300, 5), pytest.param(3000, 25, marks=pytest.mark.slow, id="long")]
)
def test_sigkill_at_random_moments(
    database: str,
    model_cache: Path,
    conn: Connection,
    embedder: Embedder,
    tmp_path: Path,
    rows: int,
    kills: int,
) -> None:
    texts = with_repeats(corpus(rows))
    seed_cache(conn, embedder, texts[:30])
    insert_many(conn, texts)
    env = daemon_env(database, model_cache)
    log = tmp_path / "daemons.log"
    daemons = [start_daemon(env, log) for _ in range(3)]
    rng = random.Random(42)
    killed: list[tuple[int, float]] = []
    try:
        for _ in range(kills):
            victim = rng.randrange(len(daemons))
            pid = daemons[victim].pid

            def working(pid: int = pid) -> bool:
                return (
                    conn.execute(
                        "SELECT 1 FROM events WHERE kind = 'worker_started'"
                        " AND (detail->>'pid')::int = %s",
                        (pid,),
                    ).fetchone()
                    is not None
                )

            # Let it get to work, then kill it at a random moment of its batches.
            assert wait_until(working, 300, 0.1), log.read_text()[-3000:]
            time.sleep(rng.uniform(0.0, 2.0))
            daemons[victim].send_signal(signal.SIGKILL)
            daemons[victim].wait(10)
            killed.append((pid, time.monotonic()))
            daemons[victim] = start_daemon(env, log)
        # A killed daemon's leases are no longer renewed: within LEASE seconds of the
        # last kill none of its rows is still held (a live daemon may take them).
        time.sleep(LEASE + 1.0)
        dead_workers = [
            r["worker_id"]
            for r in conn.execute(
                "SELECT worker_id FROM events WHERE kind = 'worker_started'"
                " AND (detail->>'pid')::int = ANY(%s)",
                ([pid for pid, _ in killed],),
            )
        ]
        held = conn.execute(
            "SELECT count(*) AS n FROM chunks WHERE state = 'claimed' AND claimed_by = ANY(%s)"
            " AND lease_expires_at > now()",
            (dead_workers,),
        ).fetchone()
        assert held == {"n": 0}
        assert wait_until(lambda: embedded_count(conn) == rows, 600, 0.5), log.read_text()[-3000:]
    finally:
        codes = stop_all(daemons)
    assert codes == [0, 0, 0], log.read_text()[-3000:]
    check_every_row_once(conn, embedder, rows)
    assert reused_rows(conn) > 0
    assert len(dead_workers) == kills
    batches = conn.execute(
        "SELECT count(*) AS n FROM events WHERE kind = 'batch_completed'"
    ).fetchone()
    print(
        f"\nSIGKILL: {kills} kills of working daemons, {rows} rows, "
        f"{batches['n'] if batches else 0} committed batches, {reused_rows(conn)} rows "
        "reused, 0 duplicates, 0 lost"
    )


# -- 2. Exactly once under concurrency ----------------------------------------------------


@pytest.mark.parametrize(
    ("daemons", "rows"),
    [
        (1, 200),
        (2, 200),
        (4, 200),
        *(pytest.param(n, 3000, marks=pytest.mark.slow, id=f"{n}-long") for n in (1, 2, 4)),
    ],
)
def test_exactly_once_with_concurrent_daemons(
    database: str,
    model_cache: Path,
    conn: Connection,
    embedder: Embedder,
    tmp_path: Path,
    daemons: int,
    rows: int,
) -> None:
    insert_many(conn, corpus(rows, seed=daemons))
    env = daemon_env(database, model_cache)
    log = tmp_path / "daemons.log"
    procs = [start_daemon(env, log, "--once") for _ in range(daemons)]
    codes = [p.wait(600) for p in procs]
    assert codes == [0] * daemons, log.read_text()[-3000:]
    check_every_row_once(conn, embedder, rows)


# -- 3. PostgreSQL restarts ------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[tuple[Path, str]]:
    """A server of this test's own, which it may stop and start."""
    data_dir = TMP / f"pg-restart-{uuid.uuid4().hex[:8]}"
    dsn = server.start(data_dir)
    migrate.upgrade(dsn, "public")
    yield data_dir, dsn
    server.stop(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


DOWN = "database unavailable, retrying"  # a daemon's first failure of an outage
BACK = "database available again"  # its first success after it


def scalar(dsn: str, query: str) -> int:
    """One number from a connection of its own (the server restarts between calls)."""
    with connect(dsn, "public", autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row["n"])


BATCHES = "SELECT count(*) AS n FROM events WHERE kind = 'batch_completed'"
LEFT = "SELECT count(*) AS n FROM chunks WHERE state <> 'embedded'"


def said(log: Path, line: str) -> int:
    return log.read_text().count(line) if log.exists() else 0


@pytest.mark.parametrize(
    ("rows", "restarts"), [(300, 1), pytest.param(2000, 5, marks=pytest.mark.slow, id="long")]
)
def test_postgres_restart_while_daemons_run(
    own_server: tuple[Path, str],
    model_cache: Path,
    embedder: Embedder,
    tmp_path: Path,
    rows: int,
    restarts: int,
) -> None:
    """Each restart waits for the state it needs, not for time: the daemons at work (a
    batch written since the server last came up, or the queue drained: an idle daemon
    polls, and meets the outage too) and none still in the previous outage; the server
    stays down until a daemon has logged the outage.  The deadlines only bound a hang."""
    data_dir, dsn = own_server
    with connect(dsn, "public", autocommit=True) as conn:
        insert_many(conn, corpus(rows, seed=5))
    env = daemon_env(dsn, model_cache, INDEXER_DB_DOWN_TIMEOUT="120")
    log = tmp_path / "daemons.log"
    daemons = [start_daemon(env, log) for _ in range(2)]
    written = 0  # batches when the server last came up
    try:
        for _ in range(restarts):

            def at_work(since: int = written) -> bool:
                working = scalar(dsn, BATCHES) > since or scalar(dsn, LEFT) == 0
                return working and said(log, DOWN) == said(log, BACK)

            assert wait_until(at_work, 300, 0.1), log.read_text()[-3000:]

            def noticed(outages: int = said(log, DOWN)) -> bool:
                return said(log, DOWN) > outages

            assert server.stop(data_dir)
            met = wait_until(noticed, 120, 0.1)
            assert server.start(data_dir) == dsn
            assert met, log.read_text()[-3000:]
            written = scalar(dsn, BATCHES)

        def done() -> bool:
            return scalar(dsn, LEFT) == 0 and said(log, DOWN) == said(log, BACK)

        assert wait_until(done, 300, 0.5), log.read_text()[-3000:]
        exited = [d.poll() for d in daemons]
        assert exited == [None, None], (
            f"a daemon exited during the outage: {exited}\n" + (log.read_text()[-3000:])
        )
    finally:
        codes = stop_all(daemons)
    assert codes == [0, 0]
    text = log.read_text()
    assert said(log, DOWN) >= restarts
    assert said(log, BACK) == said(log, DOWN)
    assert "Traceback" not in text
    with connect(dsn, "public", autocommit=True) as conn:
        check_every_row_once(conn, embedder, rows)


def test_database_that_stays_down_ends_the_daemon_with_one_line(
    model_cache: Path, tmp_path: Path
) -> None:
    env = daemon_env(
        f"postgresql://postgres@/indexer?host={tmp_path / 'nowhere'}",
        model_cache,
        INDEXER_DB_DOWN_TIMEOUT="1.5",
    )
    # Taken for an outage (retried, and logged so), until INDEXER_DB_DOWN_TIMEOUT ends
    # it; the timeout of the command only bounds a hang.
    result = run_cli(["run"], env, timeout=300)
    assert result.returncode == 1
    assert DOWN in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("indexer: error: database unavailable for"), result.stderr
    assert "(INDEXER_DB_DOWN_TIMEOUT=1.5)" in last
    assert "Traceback" not in result.stderr


# -- 4. Text changes and deletes while batches are in flight ------------------------------

#: Batches the daemons commit while the rows are rewritten and deleted under them.
CHURN_BATCHES = 25


def test_concurrent_updates_and_deletes_leave_only_current_vectors(
    database: str, model_cache: Path, conn: Connection, embedder: Embedder, tmp_path: Path
) -> None:
    texts = corpus(200, seed=9) * 2  # each text twice: reused rows in flight too
    seed_cache(conn, embedder, texts[:20])
    insert_many(conn, texts)
    env = daemon_env(database, model_cache)
    log = tmp_path / "daemons.log"
    daemons = [start_daemon(env, log) for _ in range(2)]
    stop = threading.Event()

    def churn() -> None:
        rng = random.Random(3)
        with connect(database, "public", autocommit=True) as c:
            while not stop.is_set():
                target = rng.randint(1, 400)
                if rng.random() < 0.1:
                    c.execute("DELETE FROM chunks WHERE id = %s", (target,))
                else:
                    c.execute(
                        "UPDATE chunks SET content = %s WHERE id = %s",
                        (f"rewritten {uuid.uuid4()} " + texts[target - 1][:200], target),
                    )
                time.sleep(0.01)

    def batches() -> int:
        row = conn.execute(
            "SELECT count(*) AS n FROM events WHERE kind = 'batch_completed'"
        ).fetchone()
        return int(row["n"]) if row else 0

    # The daemons at work first (a batch written); then churn while they commit
    # CHURN_BATCHES more, whatever time that takes.
    assert wait_until(lambda: batches() > 0, 300, 0.1), log.read_text()[-3000:]
    churner = threading.Thread(target=churn)
    churner.start()
    try:
        target = batches() + CHURN_BATCHES
        assert wait_until(lambda: batches() >= target, 300, 0.1), log.read_text()[-3000:]
    finally:
        stop.set()
        churner.join()
    try:
        assert wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) AS n FROM chunks WHERE state <> 'embedded'"
                ).fetchone()
                == {"n": 0}
            ),
            300,
            0.5,
        ), log.read_text()[-3000:]
    finally:
        assert stop_all(daemons) == [0, 0]
    rows = conn.execute("SELECT content, embedding FROM chunks").fetchall()
    fresh = embedder.embed([r["content"] for r in rows])
    stored = np.stack([r["embedding"].to_numpy() for r in rows])
    assert float(np.sum(fresh * stored, axis=1).min()) > 0.9999
    stale = conn.execute(
        "SELECT coalesce(sum((detail->>'stale')::int), 0) AS n FROM events"
        " WHERE kind = 'batch_completed'"
    ).fetchone()
    print(f"\nchurn: {len(rows)} rows left, {stale['n'] if stale else 0} stale vectors discarded")


# -- 5. Poison rows, through the real CLI -------------------------------------------------


def test_poison_row_is_parked_visible_and_retryable(
    database: str, model_cache: Path, conn: Connection
) -> None:
    insert_many(conn, [f"fine {i}" for i in range(30)] + ["bad POISON row"])
    env = daemon_env(
        database,
        model_cache,
        INDEXER_TEST_FAIL_MARKER="POISON",
        INDEXER_MAX_ATTEMPTS="3",
        INDEXER_RETRY_BASE_SECONDS="0.05",
    )

    def retry_due() -> bool:
        row = conn.execute(
            "SELECT retry_at IS NULL OR retry_at <= now() AS due FROM chunks"
            " WHERE content LIKE '%%POISON%%'"
        ).fetchone()
        return row is not None and bool(row["due"])

    for _ in range(3):
        assert run_cli(["run", "--once"], env).returncode == 0
        assert wait_until(retry_due, 60, 0.02)  # a backoff of 0.05 s, then 0.1 s
    row = conn.execute(
        "SELECT state, attempts, last_error FROM chunks WHERE content LIKE '%%POISON%%'"
    ).fetchone()
    assert row is not None
    assert (row["state"], row["attempts"]) == ("failed", 3)
    assert "injected failure" in row["last_error"]
    assert embedded_count(conn) == 30
    status = run_cli(["status"], env)
    assert "failed row" in status.stdout and "injected failure" in status.stdout
    retried = run_cli(["retry", "--failed"], env)
    assert "re-queued 1 failed rows" in retried.stdout
    clean = cli_env(database, model_cache)
    assert run_cli(["run", "--once"], clean).returncode == 0
    assert embedded_count(conn) == 31


# -- 6. Bad input ------------------------------------------------------------------------------

ODD_TEXTS = [
    "",
    "   \t\n  ",
    "control \x01\x02\x07\x1b[31m characters",
    "combining e\u0301\u0301\u0301 marks a\u0308\u0323",
    "emoji 👍🏽🚀👩‍👩‍👧‍👦 flags 🇫🇷",
    "مرحبا بالعالم، هذا نص عربي",
    "שלום עולם, זה טקסט בעברית",
    "mixed \u202eright-to-left override\u202c text",
    "x'); DROP TABLE chunks; --",
]


def test_odd_huge_and_bulk_input(
    database: str, model_cache: Path, conn: Connection, embedder: Embedder, tmp_path: Path
) -> None:
    insert_many(conn, ODD_TEXTS)
    conn.execute("INSERT INTO chunks (content) VALUES (repeat('lorem ipsum dolor ', 2900000))")
    conn.execute(
        "INSERT INTO chunks (content) SELECT 'bulk row ' || i FROM generate_series(1, 10000) i"
    )
    total = len(ODD_TEXTS) + 1 + 10000
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cli_env(database, model_cache), log, "--once")
    peak = 0
    process = psutil.Process(daemon.pid)
    while daemon.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    assert daemon.returncode == 0, log.read_text()[-3000:]
    assert embedded_count(conn) == total
    print(f"\npeak RSS draining a 50 MB row + {total - 1} others: {peak / 2**20:.0f} MiB")
    assert peak < 2**30
    rows = conn.execute(
        "SELECT content, embedding FROM chunks WHERE id <= %s ORDER BY id", (len(ODD_TEXTS),)
    ).fetchall()
    assert [r["content"] for r in rows] == ODD_TEXTS
    fresh = embedder.embed(ODD_TEXTS)
    stored = np.stack([r["embedding"].to_numpy() for r in rows])
    assert float(np.sum(fresh * stored, axis=1).min()) > 0.9999
    assert conn.execute("SELECT count(*) AS n FROM chunks").fetchone() == {"n": total}


# -- 7. Bad environment: one line, non-zero exit ------------------------------------------


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("indexer: error: ")
    return lines[0]


def test_unreachable_database(model_cache: Path, tmp_path: Path) -> None:
    env = cli_env(f"postgresql://postgres@/indexer?host={tmp_path}", model_cache)
    assert "cannot connect to PostgreSQL" in one_line_error(run_cli(["status"], env))


def test_missing_pgvector_and_unmigrated_schema(empty_database: str, model_cache: Path) -> None:
    env = cli_env(empty_database, model_cache)
    assert "indexer migrate" in one_line_error(run_cli(["status"], env))
    with connect(empty_database, "public", vector=False) as c:
        c.execute("CREATE EXTENSION vector")
    line = one_line_error(run_cli(["run", "--once"], env))
    assert "run `indexer migrate`" in line
    assert run_cli(["migrate"], env).returncode == 0
    assert run_cli(["run", "--once"], env).returncode == 0


def test_missing_model_files(tmp_path: Path, model_cache: Path) -> None:
    env = cli_env(None, model_cache, INDEXER_MODEL_DIR=str(tmp_path / "no-model"))
    line = one_line_error(run_cli(["embed"], env, input='{"text": "x"}\n'))
    assert "no-model" in line


def test_unwritable_data_dir(tmp_path: Path, model_cache: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = cli_env(None, model_cache, INDEXER_DATA_DIR=str(blocker / "pgdata"))
    assert "INDEXER_DATA_DIR" in one_line_error(run_cli(["dsn"], env))


@pytest.mark.parametrize(
    ("variable", "value", "expect"),
    [
        ("INDEXER_BATCH_SIZE", "many", "not a number"),
        ("INDEXER_BATCH_SIZE", "0", "at least 1"),
        ("INDEXER_SCHEMA", 'x"; DROP TABLE chunks; --', "not a plain SQL identifier"),
        ("INDEXER_PROVIDER", "NoSuchExecutionProvider", "NoSuchExecutionProvider"),
    ],
)
def test_bad_settings(
    database: str, model_cache: Path, variable: str, value: str, expect: str
) -> None:
    env = cli_env(database, model_cache, **{variable: value})
    assert expect in one_line_error(run_cli(["embed"], env, input='{"text": "x"}\n'))


# -- 8. Graceful stop during a batch -------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_batch_finishes_it_and_exits_zero(
    database: str, model_cache: Path, conn: Connection, tmp_path: Path, sig: signal.Signals
) -> None:
    insert_many(conn, corpus(400, seed=11))
    log = tmp_path / "daemon.log"
    daemon = start_daemon(daemon_env(database, model_cache), log)
    try:
        assert wait_until(
            lambda: (
                conn.execute("SELECT 1 FROM events WHERE kind = 'batch_completed'").fetchone()
                is not None
            ),
            60,
        )
        daemon.send_signal(sig)
        start = time.monotonic()
        assert daemon.wait(20) == 0, log.read_text()
        print(f"\n{sig.name}: stopped {time.monotonic() - start:.2f} s after the signal")
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert conn.execute("SELECT count(*) AS n FROM chunks WHERE state = 'claimed'").fetchone() == {
        "n": 0
    }
    last = conn.execute("SELECT kind FROM events ORDER BY id DESC LIMIT 1").fetchone()
    assert last == {"kind": "worker_stopped"}
    assert "Traceback" not in log.read_text()


def test_no_process_leaks() -> None:
    """The scenarios above leave no daemon behind."""
    me = psutil.Process(os.getpid())
    assert [c for c in me.children(recursive=True) if "indexer.cli" in " ".join(c.cmdline())] == []
