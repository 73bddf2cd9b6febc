"""The queue in SQL: triggers, claims, guarded writes, failures.  Real PostgreSQL.

Vectors here are random unit vectors: these tests are about bookkeeping, not the model.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from indexer.db.connect import Connection, check_pgvector_version
from indexer.exceptions import ExtensionMissing
from indexer.store import NOTIFY_CHANNEL, ClaimedRow, Listener, Store

RNG = np.random.default_rng(7)


def unit_vectors(n: int) -> np.ndarray:
    v = RNG.standard_normal((n, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    with Store(database, "public") as m:
        yield m


def insert(conn: Connection, *texts: str) -> list[int]:
    ids = []
    for text in texts:
        row = conn.execute("INSERT INTO chunks (content) VALUES (%s) RETURNING id", (text,))
        ids.append(row.fetchone()["id"])  # type: ignore[index]
    return ids


def chunk(conn: Connection, chunk_id: int) -> dict[str, object]:
    row = conn.execute("SELECT * FROM chunks WHERE id = %s", (chunk_id,)).fetchone()
    assert row is not None
    return dict(row)


def complete(store: Store, worker: uuid.UUID, rows: list[ClaimedRow]) -> list[int]:
    return store.complete_batch(
        worker,
        uuid.uuid4(),
        rows,
        unit_vectors(len(rows)),
        model="test",
        token_count=1,
        claim_ms=0.0,
        embed_ms=0.0,
    )


def test_insert_is_pending_and_claim_takes_it_once(conn: Connection, store: Store) -> None:
    (cid,) = insert(conn, "hello")
    assert chunk(conn, cid)["state"] == "pending"
    a, b = uuid.uuid4(), uuid.uuid4()
    rows = store.claim(a, 10, 30, 1000)
    assert [r.id for r in rows] == [cid]
    assert store.claim(b, 10, 30, 1000) == []
    row = chunk(conn, cid)
    assert row["state"] == "claimed"
    assert row["claimed_by"] == a


def test_complete_writes_vector_and_one_event(conn: Connection, store: Store) -> None:
    ids = insert(conn, "one", "two", "three")
    worker = uuid.uuid4()
    rows = store.claim(worker, 10, 30, 1000)
    assert complete(store, worker, rows) == ids
    for cid in ids:
        row = chunk(conn, cid)
        assert row["state"] == "embedded"
        assert row["embedding"] is not None
        assert row["embedding_model"] == "test"
        assert row["claimed_by"] is None
    events = conn.execute("SELECT * FROM events WHERE kind = 'batch_completed'").fetchall()
    assert len(events) == 1
    assert events[0]["row_count"] == 3
    assert events[0]["chunk_ids"] == ids
    assert events[0]["worker_id"] == worker
    assert events[0]["write_ms"] is not None


def test_text_changed_in_flight_discards_the_stale_vector(conn: Connection, store: Store) -> None:
    stays, changes = insert(conn, "stays", "old text")
    worker = uuid.uuid4()
    rows = store.claim(worker, 10, 30, 1000)
    conn.execute("UPDATE chunks SET content = 'new text' WHERE id = %s", (changes,))
    assert complete(store, worker, rows) == [stays]
    row = chunk(conn, changes)
    assert row["state"] == "pending"
    assert row["embedding"] is None
    assert row["content_version"] == 2
    event = conn.execute("SELECT detail FROM events WHERE kind = 'batch_completed'").fetchone()
    assert event is not None and event["detail"]["stale"] == 1
    # The new text is claimed again, at its new version.
    (again,) = store.claim(worker, 10, 30, 1000)
    assert (again.id, again.content_version, again.content) == (changes, 2, "new text")


def test_row_deleted_in_flight_is_simply_gone(conn: Connection, store: Store) -> None:
    keep, gone = insert(conn, "keep", "gone")
    worker = uuid.uuid4()
    rows = store.claim(worker, 10, 30, 1000)
    conn.execute("DELETE FROM chunks WHERE id = %s", (gone,))
    assert complete(store, worker, rows) == [keep]
    assert conn.execute("SELECT count(*) AS n FROM chunks").fetchone() == {"n": 1}


def test_expired_lease_is_reclaimed_and_the_late_write_is_discarded(
    conn: Connection, store: Store
) -> None:
    (cid,) = insert(conn, "text")
    slow, fast = uuid.uuid4(), uuid.uuid4()
    slow_rows = store.claim(slow, 10, 30, 1000)
    assert store.claim(fast, 10, 30, 1000) == []
    # The slow daemon stalls past its lease: as if the 30 s had passed, not waited for.
    conn.execute(
        "UPDATE chunks SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (cid,)
    )
    fast_rows = store.claim(fast, 10, 30, 1000)
    assert [r.id for r in fast_rows] == [cid]
    assert complete(store, slow, slow_rows) == []
    assert complete(store, fast, fast_rows) == [cid]
    written = conn.execute(
        "SELECT count(*) AS n FROM events, unnest(chunk_ids) AS written(chunk_id)"
        " WHERE kind = 'batch_completed' AND chunk_id = %s",
        (cid,),
    ).fetchone()
    assert written == {"n": 1}


def test_same_content_is_not_embedded_again(conn: Connection, store: Store) -> None:
    (cid,) = insert(conn, "unchanged")
    worker = uuid.uuid4()
    complete(store, worker, store.claim(worker, 10, 30, 1000))
    conn.execute(
        "UPDATE chunks SET content = content, metadata = '{\"a\": 1}' WHERE id = %s", (cid,)
    )
    row = chunk(conn, cid)
    assert row["state"] == "embedded"
    assert row["content_version"] == 1
    assert store.claim(worker, 10, 30, 1000) == []


def test_changed_content_drops_the_old_vector(conn: Connection, store: Store) -> None:
    (cid,) = insert(conn, "before")
    worker = uuid.uuid4()
    complete(store, worker, store.claim(worker, 10, 30, 1000))
    conn.execute("UPDATE chunks SET content = 'after' WHERE id = %s", (cid,))
    row = chunk(conn, cid)
    assert (row["state"], row["embedding"], row["embedded_at"]) == ("pending", None, None)


def test_failures_back_off_then_park_then_retry(conn: Connection, store: Store) -> None:
    (cid,) = insert(conn, "poison")
    worker = uuid.uuid4()
    for attempt in range(1, 4):
        rows = store.claim(worker, 10, 30, 1000)
        assert [r.id for r in rows] == [cid], f"attempt {attempt}"
        store.fail_rows(
            worker,
            uuid.uuid4(),
            [(rows[0], f"boom {attempt}\nsecond line")],
            max_attempts=3,
            retry_base_seconds=60,
            embed_ms=1.0,
        )
        row = chunk(conn, cid)
        assert row["attempts"] == attempt
        assert row["last_error"] == f"boom {attempt}"
        if attempt < 3:
            assert row["state"] == "pending"
            backoff = conn.execute(
                "SELECT extract(epoch FROM retry_at - updated_at) AS s FROM chunks WHERE id = %s",
                (cid,),
            ).fetchone()
            assert backoff == {"s": 60 * 2 ** (attempt - 1)}  # 1 min, then 2
            assert store.claim(worker, 10, 30, 1000) == []  # backing off
            # Its retry time comes: as if the minutes had passed, not waited for.
            conn.execute("UPDATE chunks SET retry_at = now() WHERE id = %s", (cid,))
    assert chunk(conn, cid)["state"] == "failed"
    assert store.claim(worker, 10, 30, 1000) == []
    assert store.status()["failed"] == 1
    assert [r["id"] for r in store.failed_rows()] == [cid]
    events = conn.execute(
        "SELECT chunk_ids, error, detail FROM events WHERE kind = 'batch_failed' ORDER BY id"
    ).fetchall()
    assert len(events) == 3
    assert events[-1]["detail"]["parked"] == [cid]

    assert store.retry_failed() == [cid]
    row = chunk(conn, cid)
    assert (row["state"], row["attempts"], row["last_error"]) == ("pending", 0, None)


def test_claim_reads_a_bounded_prefix_of_huge_rows(conn: Connection, store: Store) -> None:
    conn.execute("INSERT INTO chunks (content) VALUES (repeat('é', 5000000))")
    (row,) = store.claim(uuid.uuid4(), 10, 30, 1234)
    assert row.content == "é" * 1234


def test_claim_uses_the_partial_queue_index(conn: Connection) -> None:
    conn.execute(
        "INSERT INTO chunks (content, embedding)"
        " SELECT 'x' || i, array_fill(0.1, ARRAY[384])::vector FROM generate_series(1, 20000) i"
    )
    insert(conn, "pending one")
    conn.execute("ANALYZE chunks")
    plan = conn.execute(
        "EXPLAIN SELECT id FROM chunks WHERE state IN ('pending', 'claimed')"
        " AND ((state = 'pending' AND (retry_at IS NULL OR retry_at <= now()))"
        " OR (state = 'claimed' AND lease_expires_at < now()))"
        " ORDER BY id LIMIT 64 FOR UPDATE SKIP LOCKED"
    ).fetchall()
    text = "\n".join(r["QUERY PLAN"] for r in plan)
    assert "chunks_queue_idx" in text, text


def test_notify_on_new_and_changed_rows(database: str, conn: Connection) -> None:
    listener = Listener(database, "public")
    try:
        assert listener.wait(0.05)  # starts listening: "look once more"
        assert not listener.wait(0.05)
        insert(conn, "wake up")
        assert listener.wait(30)  # returns as soon as it arrives
        conn.execute("UPDATE chunks SET metadata = '{\"k\": 1}'")
        assert not listener.wait(0.1)  # metadata alone needs no embedding
        conn.execute("UPDATE chunks SET content = 'changed'")
        assert listener.wait(30)  # returns as soon as it arrives
    finally:
        listener.close()


def test_the_trigger_notifies_the_channel_the_listener_listens_on(conn: Connection) -> None:
    # The channel is named in migration 0001 (history, never edited) and in
    # indexer.store.listen: this test is what keeps the two equal.
    row = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'chunks_notify'").fetchone()
    assert row is not None
    assert f"pg_notify('{NOTIFY_CHANNEL}'" in row["prosrc"]


def test_hostile_text_is_stored_verbatim(conn: Connection, store: Store) -> None:
    hostile = "x'); DROP TABLE chunks; -- \" \\ $$ %s %(id)s"
    keep, target = insert(conn, "other row", hostile)
    worker = uuid.uuid4()
    rows = store.claim(worker, 10, 30, 1000)
    assert {r.content for r in rows} == {"other row", hostile}
    complete(store, worker, rows)
    assert chunk(conn, target)["content"] == hostile
    assert chunk(conn, keep)["content"] == "other row"


def test_content_is_required(conn: Connection) -> None:
    with pytest.raises(psycopg.errors.NotNullViolation):
        conn.execute("INSERT INTO chunks (content) VALUES (NULL)")


def test_status_view(conn: Connection, store: Store) -> None:
    insert(conn, "a", "b", "c")
    worker = uuid.uuid4()
    rows = store.claim(worker, 2, 30, 1000)
    complete(store, worker, rows[:1])
    status = store.status()
    assert (status["pending"], status["in_flight"], status["embedded"], status["failed"]) == (
        1,
        1,
        1,
        0,
    )
    assert status["backlog"] == 2
    queue = store.queue_status()
    assert {k: queue[k] for k in ("pending", "in_flight", "backlog", "failed")} == {
        k: status[k] for k in ("pending", "in_flight", "backlog", "failed")
    }
    assert queue["oldest_pending_age"] is not None
    assert status["rows_per_second"] > 0
    assert status["eta"] is not None


@pytest.mark.parametrize("version", ["0.5.1", "0.6.2"])
def test_old_pgvector_is_refused(version: str) -> None:
    with pytest.raises(ExtensionMissing):
        check_pgvector_version(version)


@pytest.mark.parametrize("version", ["0.7.0", "0.8.5", "1.0"])
def test_recent_pgvector_is_accepted(version: str) -> None:
    check_pgvector_version(version)
