"""The worker in-process: real model, real PostgreSQL, the real loop and store."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from indexer.db.connect import Connection
from indexer.embedding import Embedder, TextEmbedder
from indexer.settings import Settings
from indexer.store import Store
from indexer.store.queries import QUERIES
from indexer.testing import FaultInjector
from indexer.worker import Worker

from ..conftest import with_database
from ..helpers import CORPUS, wait_until


def insert(conn: Connection, *texts: str) -> list[int]:
    return [
        conn.execute("INSERT INTO chunks (content) VALUES (%s) RETURNING id", (t,)).fetchone()["id"]  # type: ignore[index]
        for t in texts
    ]


def vector_of(conn: Connection, chunk_id: int) -> np.ndarray | None:
    row = conn.execute("SELECT embedding FROM chunks WHERE id = %s", (chunk_id,)).fetchone()
    assert row is not None
    value = row["embedding"]
    return None if value is None else np.asarray(value.to_numpy())


def has_vector(conn: Connection, chunk_id: int) -> bool:
    return vector_of(conn, chunk_id) is not None


def cut_off(conn: Connection, seconds: float) -> None:
    """An outage of this database for everyone but ``conn``: new connections are refused
    and every other session is killed, until ``seconds`` have passed."""
    name = sql.Identifier(conn.info.dbname)
    admin = psycopg.connect(with_database(conn.info.dsn, "postgres"), autocommit=True)
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    def back() -> None:
        time.sleep(seconds)
        with admin:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))

    threading.Thread(target=back, daemon=True).start()


def drain(settings: Settings, embedder: TextEmbedder) -> Worker:
    assert settings.database_url is not None
    with Store(settings.database_url, settings.schema) as store:
        worker = Worker(settings, store, embedder)
        worker.run(once=True)
    return worker


def test_drain_writes_the_models_vectors(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    ids = insert(conn, *CORPUS.values())
    worker = drain(settings, embedder)
    expected = embedder.embed(list(CORPUS.values()))
    for cid, want in zip(ids, expected, strict=True):
        got = vector_of(conn, cid)
        assert got is not None
        assert float(np.dot(got, want)) > 0.99999
    assert worker.rows_written == len(CORPUS)
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM events ORDER BY id")]
    assert kinds == ["worker_started", "batch_completed", "worker_stopped"]
    event = conn.execute("SELECT * FROM events WHERE kind = 'batch_completed'").fetchone()
    assert event is not None
    assert event["row_count"] == len(CORPUS)
    assert event["token_count"] == sum(embedder.count_tokens(list(CORPUS.values())))
    assert event["embed_ms"] > 0


def test_one_event_per_batch(settings: Settings, embedder: Embedder, conn: Connection) -> None:
    insert(conn, *(f"row number {i}" for i in range(25)))
    small = Settings(**{**settings.__dict__, "batch_size": 10})
    drain(small, embedder)
    counts = [
        r["row_count"]
        for r in conn.execute(
            "SELECT row_count FROM events WHERE kind = 'batch_completed' ORDER BY id"
        )
    ]
    assert counts == [10, 10, 5]


def test_a_claim_is_embedded_shortest_first_one_batch_at_a_time(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    # Lengths that do not follow the ids: 1, 8, 15, 22, 4, 11, ... words.
    texts = [" ".join(["word"] * ((i * 7) % 25 + 1)) for i in range(25)]
    ids = insert(conn, *texts)
    length = dict(zip(ids, embedder.count_tokens(texts), strict=True))
    small = Settings(**{**settings.__dict__, "batch_size": 5, "claim_size": 12})
    drain(small, embedder)
    events = conn.execute(
        "SELECT row_count, chunk_ids, claim_ms FROM events"
        " WHERE kind = 'batch_completed' ORDER BY id"
    ).fetchall()
    # Claims of 12, 12 and 1 rows (oldest first), each cut into batches of 5.
    assert [e["row_count"] for e in events] == [5, 5, 2, 5, 5, 2, 1]
    # The claim's time is counted once, on its first batch.
    assert [e["claim_ms"] > 0 for e in events] == [True, False, False] * 2 + [True]
    for claim, batches in ((ids[:12], events[:3]), (ids[12:24], events[3:6])):
        assert sorted(i for e in batches for i in e["chunk_ids"]) == claim
        for shorter, longer in itertools.pairwise(batches):
            assert max(length[i] for i in shorter["chunk_ids"]) <= min(
                length[i] for i in longer["chunk_ids"]
            )
    # Each row got its own text's vector, whatever batch it landed in.
    expected = embedder.embed(texts)
    for cid, want in zip(ids, expected, strict=True):
        got = vector_of(conn, cid)
        assert got is not None and float(np.dot(got, want)) > 0.99999


def test_stopping_between_batches_gives_the_rest_of_the_claim_back(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    insert(conn, *(f"row number {i}" for i in range(20)))
    small = Settings(**{**settings.__dict__, "batch_size": 5, "claim_size": 20})
    with Store(settings.database_url or "", "public") as store:
        worker = Worker(small, store, embedder)
        worker.on_batch = lambda result: worker.stop()
        worker.run()
    states = {
        (r["state"], r["claimed_by"]): r["n"]
        for r in conn.execute(
            "SELECT state, claimed_by, count(*) AS n FROM chunks GROUP BY state, claimed_by"
        )
    }
    assert states == {("embedded", None): 5, ("pending", None): 15}
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM events ORDER BY id")]
    assert kinds == ["worker_started", "batch_completed", "worker_stopped"]


def test_an_outage_mid_claim_loses_and_repeats_nothing(
    settings: Settings, embedder: Embedder, conn: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    ids = insert(conn, *(f"row number {i}" for i in range(20)))
    small = Settings(**{**settings.__dict__, "batch_size": 5, "claim_size": 20})
    with Store(settings.database_url or "", "public") as store:
        worker = Worker(small, store, embedder)

        def cut_connection_once(result: object) -> None:
            # After the first batch: a real outage (no new connections for 7 s, every
            # session of the daemon killed), so the next write fails mid-claim; the
            # daemon must write it once the database is back and give the rest of the
            # claim back rather than hold rows it could not renew.
            if worker.batches == 1:
                cut_off(conn, seconds=7)

        worker.on_batch = cut_connection_once
        worker.run(once=True)
    assert "database unavailable" in caplog.text
    rows = conn.execute("SELECT id, state, claimed_by FROM chunks ORDER BY id").fetchall()
    assert [(r["id"], r["state"], r["claimed_by"]) for r in rows] == [
        (i, "embedded", None) for i in ids
    ]
    written = conn.execute(
        "SELECT array_agg(x ORDER BY x) AS ids"
        " FROM events, unnest(chunk_ids) AS x WHERE kind = 'batch_completed'"
    ).fetchone()
    assert written is not None and written["ids"] == ids  # each row written exactly once


def test_search_puts_the_related_row_first(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    ids = dict(zip(CORPUS, insert(conn, *CORPUS.values()), strict=True))
    drain(settings, embedder)
    with Store(settings.database_url or "", "public") as store:
        hits = store.search(embedder.embed(["which database supports SQL?"])[0], 3)
        assert hits[0].id == ids["db"]
        assert hits[0].score > hits[1].score
        pets = store.search(embedder.embed(["my kitten sleeps all day"])[0], 1)
        assert pets[0].id == ids["cat"]
    # The same from SQL, by vector and by chunk id.
    row = conn.execute("SELECT id FROM similar_chunks(%s, 1)", (ids["cat"],)).fetchone()
    assert row is not None and row["id"] != ids["cat"]
    query = embedder.embed(["stock prices dropped"])[0]
    top = conn.execute("SELECT id FROM search_chunks(%s, 1)", (query,)).fetchone()
    assert top is not None and top["id"] == ids["stocks"]


def test_search_sql_uses_the_hnsw_index(conn: Connection) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with conn.cursor().copy("COPY chunks (content, embedding) FROM STDIN") as copy:
        for i, v in enumerate(vectors):
            copy.write_row((f"row {i}", "[" + ",".join(f"{x:.6f}" for x in v) + "]"))
    conn.execute("ANALYZE chunks")
    # The functions run with a search_path of their own, so the planner does not inline
    # them and EXPLAIN shows only a function scan: count the index's scans instead.
    for statement in (
        "SELECT * FROM search_chunks(%s, 10)",
        "SELECT * FROM search_chunks(%s, 10, '{}')",
        "SELECT * FROM similar_chunks(1, 10)",
        QUERIES["search"],
    ):
        params: Any = (vectors[0],) if "%s" in statement else None
        if "%(query)s" in statement:
            params = {"query": vectors[0], "k": 10, "filter": "{}", "max_chars": 100, "model": None}
        before = _hnsw_scans(conn)
        assert len(conn.execute(statement, params).fetchall()) == 10
        assert _hnsw_scans(conn) > before, statement


def _hnsw_scans(conn: Connection) -> int:
    """How many times chunks_embedding_idx was scanned, this session's scans included."""
    conn.execute("SELECT pg_stat_force_next_flush()")  # flushed before the next statement
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'chunks_embedding_idx'"
    ).fetchone()
    assert row is not None
    return int(row["idx_scan"])


def test_update_is_re_embedded_with_the_new_text(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    (cid,) = insert(conn, CORPUS["cat"])
    drain(settings, embedder)
    conn.execute("UPDATE chunks SET content = %s WHERE id = %s", (CORPUS["stocks"], cid))
    assert vector_of(conn, cid) is None
    drain(settings, embedder)
    got = vector_of(conn, cid)
    assert got is not None
    assert float(np.dot(got, embedder.embed([CORPUS["stocks"]])[0])) > 0.99999


def test_a_poison_row_does_not_block_the_others(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    poisoned = Settings(**{**settings.__dict__, "max_attempts": 2, "retry_base_seconds": 0.01})
    failing = FaultInjector(embedder, "POISON")
    texts = [f"good row {i}" for i in range(9)]
    texts.insert(4, "this row is POISON")
    ids = insert(conn, *texts)
    drain(poisoned, failing)
    states = {r["id"]: r["state"] for r in conn.execute("SELECT id, state FROM chunks")}
    assert states[ids[4]] in ("pending", "failed")
    assert all(states[i] == "embedded" for i in ids if i != ids[4])

    def retry_due() -> bool:
        row = conn.execute(
            "SELECT retry_at IS NULL OR retry_at <= now() AS due FROM chunks WHERE id = %s",
            (ids[4],),
        ).fetchone()
        return row is not None and bool(row["due"])

    assert wait_until(retry_due, 30)
    drain(poisoned, failing)
    row = conn.execute(
        "SELECT state, attempts, last_error FROM chunks WHERE id = %s", (ids[4],)
    ).fetchone()
    assert row is not None
    assert (row["state"], row["attempts"]) == ("failed", 2)
    assert "POISON" in row["last_error"]


def test_stop_event_ends_an_idle_daemon(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    with Store(settings.database_url or "", "public") as store:
        worker = Worker(settings, store, embedder)
        thread = threading.Thread(target=worker.run)
        thread.start()
        insert(conn, "picked up while running")
        assert wait_until(
            lambda: (
                conn.execute("SELECT count(*) AS n FROM chunks WHERE state = 'embedded'").fetchone()
                == {"n": 1}
            ),
            30,
        )
        worker.stop()
        thread.join(5)
        assert not thread.is_alive()
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM events ORDER BY id")]
    assert kinds[0] == "worker_started" and kinds[-1] == "worker_stopped"
