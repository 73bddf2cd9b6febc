"""The indexer_status view: rate, ETA and active workers for daemons in every state.

Events are written directly, with ``at`` relative to ``now()``, inside one transaction
together with the read of the view: ``now()`` is the transaction's start, so every
window has the length the test chose, however slowly the machine runs.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from psycopg import sql

from indexer.db.connect import Connection
from tests.integration.test_sources_sql import apply_changes


@dataclass
class Daemon:
    """Writes the events one daemon would write, each ``ago`` seconds before now()."""

    conn: Connection
    worker_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def event(self, kind: str, ago: float, **columns: Any) -> None:
        names = sql.SQL(", ").join(map(sql.Identifier, ["kind", "worker_id", "at", *columns]))
        values = sql.SQL(", ").join(
            [sql.Placeholder(), sql.Placeholder(), sql.SQL("now() - make_interval(secs => %s)")]
            + [sql.Placeholder()] * len(columns)
        )
        self.conn.execute(
            sql.SQL("INSERT INTO events ({}) VALUES ({})").format(names, values),
            [kind, self.worker_id, ago, *columns.values()],
        )

    def started(self, ago: float) -> None:
        self.event("worker_started", ago)

    def stopped(self, ago: float) -> None:
        self.event("worker_stopped", ago)

    def batches(self, rows: int, batches: int, began: float, ended: float) -> None:
        """``rows`` written in ``batches`` back-to-back batches from ``began`` to ``ended``
        seconds ago; each batch's at minus its claim + embed + write time is when the
        previous one ended."""
        seconds = (began - ended) / batches
        for n in range(batches):
            self.event(
                "batch_completed",
                began - (n + 1) * seconds,
                batch_id=uuid.uuid4(),
                row_count=rows // batches,
                claim_ms=seconds * 100,
                embed_ms=seconds * 800,
                write_ms=seconds * 100,
            )


def pending(conn: Connection, n: int) -> None:
    conn.execute(
        "INSERT INTO chunks (content) SELECT 'row ' || i FROM generate_series(1, %s) i", (n,)
    )


def claim(conn: Connection, daemon: Daemon, n: int, lease_seconds: float) -> None:
    """Lease ``n`` pending rows to ``daemon`` (lease_seconds < 0: a lease that ran out)."""
    conn.execute(
        "UPDATE chunks SET state = 'claimed', claimed_by = %s,"
        " lease_expires_at = now() + make_interval(secs => %s)"
        " WHERE id IN (SELECT id FROM chunks WHERE state = 'pending' ORDER BY id LIMIT %s)",
        (daemon.worker_id, lease_seconds, n),
    )


def status(conn: Connection) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM indexer_status").fetchone()
    assert row is not None
    return row


def rate(row: dict[str, Any]) -> float:
    value = row["rows_per_second"]
    assert isinstance(value, Decimal)
    return float(value)


def eta_seconds(row: dict[str, Any]) -> float:
    value = row["eta"]
    assert isinstance(value, datetime.timedelta)
    return value.total_seconds()


def test_daemon_started_five_seconds_ago(conn: Connection) -> None:
    with conn.transaction():
        pending(conn, 680)
        daemon = Daemon(conn)
        daemon.started(5.0)
        daemon.batches(rows=340, batches=10, began=5.0, ended=0.0)
        row = status(conn)
    # 340 rows in 5 s is 68 rows/s, not 340 / 60.
    assert rate(row) == pytest.approx(68, abs=0.01)
    assert row["active_workers"] == 1
    assert row["backlog"] == 680
    assert eta_seconds(row) == pytest.approx(10, abs=1)


def test_window_starts_no_earlier_than_the_worker(conn: Connection) -> None:
    with conn.transaction():
        pending(conn, 10)
        daemon = Daemon(conn)
        daemon.started(5.0)
        # The first batch's timings reach back to 7 s ago, before the daemon started.
        daemon.batches(rows=340, batches=1, began=7.0, ended=0.0)
        row = status(conn)
    assert rate(row) == pytest.approx(68, abs=0.01)


def test_stopped_daemon_is_not_active_and_has_no_eta(conn: Connection) -> None:
    with conn.transaction():
        pending(conn, 100)
        daemon = Daemon(conn)
        daemon.started(7.0)
        daemon.batches(rows=340, batches=10, began=7.0, ended=2.0)
        daemon.stopped(2.0)
        row = status(conn)
    assert row["active_workers"] == 0
    assert row["eta"] is None
    # What was written in the last minute, over the time since it began.
    assert rate(row) == pytest.approx(340 / 7, abs=0.01)


def test_two_live_daemons_after_a_restart(conn: Connection) -> None:
    with conn.transaction():
        pending(conn, 1200)
        before_restart = Daemon(conn)
        before_restart.started(50.0)
        before_restart.batches(rows=300, batches=10, began=50.0, ended=40.0)
        before_restart.stopped(40.0)
        first, second = Daemon(conn), Daemon(conn)
        for daemon in (first, second):
            daemon.started(40.0)
            daemon.batches(rows=1200, batches=40, began=40.0, ended=0.0)
        row = status(conn)
    assert row["active_workers"] == 2
    assert rate(row) == pytest.approx((300 + 2 * 1200) / 50, abs=0.01)
    assert eta_seconds(row) == pytest.approx(1200 / 54, abs=1)


def test_no_daemon_at_all(conn: Connection) -> None:
    with conn.transaction():
        pending(conn, 1000)
        # A daemon killed long ago: no worker_stopped, and its leases ran out.
        killed = Daemon(conn)
        killed.started(3600.0)
        killed.batches(rows=100, batches=10, began=3600.0, ended=400.0)
        claim(conn, killed, 10, lease_seconds=-300)
        # An `indexer run --once` that wrote one row and stopped half a minute ago.
        once = Daemon(conn)
        once.started(31.0)
        once.batches(rows=1, batches=1, began=31.0, ended=30.5)
        once.stopped(30.0)
        row = status(conn)
    assert row["active_workers"] == 0
    assert row["eta"] is None
    assert row["backlog"] == 1000


def test_restarted_daemon_that_wrote_nothing_yet(conn: Connection) -> None:
    with conn.transaction():
        pending(conn, 5)
        previous = Daemon(conn)
        previous.started(30.0)
        previous.stopped(20.0)
        Daemon(conn).started(1.0)
        row = status(conn)
    assert row["active_workers"] == 1
    assert rate(row) == 0
    assert row["eta"] is None


def test_idle_daemon_is_active(conn: Connection) -> None:
    with conn.transaction():
        daemon = Daemon(conn)
        daemon.started(170.0)
        daemon.batches(rows=10, batches=1, began=170.0, ended=169.0)
        row = status(conn)
    assert row["active_workers"] == 1
    assert rate(row) == 0
    assert row["eta"] is None


def test_daemon_in_a_long_model_call_is_active(conn: Connection) -> None:
    # Its last event is old, but it holds rows under a lease it keeps renewing.
    with conn.transaction():
        pending(conn, 50)
        daemon = Daemon(conn)
        daemon.started(900.0)
        claim(conn, daemon, 20, lease_seconds=40)
        row = status(conn)
    assert row["active_workers"] == 1
    assert row["in_flight"] == 20


# -- rows and the sources' documents, counted apart -----------------------------------

VECTOR = "[" + ",".join(["1"] + ["0"] * 383) + "]"


def document(conn: Connection, content: str, passages: int, state: str) -> None:
    """A document of the built-in documents source in ``state``; ``passages`` passages
    written as the daemon writes them."""
    row = conn.execute(
        "INSERT INTO documents (content) VALUES (%s) RETURNING id", (content,)
    ).fetchone()
    assert row is not None
    apply_changes(conn)
    doc = conn.execute(
        "UPDATE source_documents SET state = %s, chunk_count = %s,"
        " last_error = CASE WHEN %s = 'failed' THEN 'boom' END"
        " WHERE doc_key = %s AND source_id = (SELECT id FROM sources WHERE name = 'documents')"
        " RETURNING id, source_id",
        (state, passages, state, str(row["id"])),
    ).fetchone()
    assert doc is not None
    for position in range(passages):
        conn.execute(
            "INSERT INTO chunks (content, embedding, document_id, source_id, doc_key, position,"
            " char_start, char_end) VALUES (%s, %s, %s, %s, %s, %s, 0, 1)",
            (content, VECTOR, doc["id"], doc["source_id"], str(row["id"]), position),
        )


def test_rows_and_passages_are_counted_apart(conn: Connection) -> None:
    conn.execute(
        "INSERT INTO chunks (content, embedding)"
        " SELECT 'row ' || i, %s FROM generate_series(1, 4) i",
        (VECTOR,),
    )
    pending(conn, 2)
    document(conn, "a long report", 392, "indexed")
    document(conn, "another report", 0, "failed")
    document(conn, "a third", 0, "pending")
    row = status(conn)
    # Only rows in the rows' columns: 4 embedded, not 4 + 392.
    assert (row["embedded"], row["pending"], row["backlog"], row["failed"]) == (4, 2, 2, 0)
    assert row["passages"] == 392
    assert (row["documents"], row["documents_indexed"], row["documents_failed"]) == (3, 1, 1)
    assert (row["documents_pending"], row["documents_in_flight"]) == (1, 0)


def test_the_rows_rate_leaves_the_documents_batches_out(conn: Connection) -> None:
    with conn.transaction():
        pending(conn, 100)
        daemon = Daemon(conn)
        daemon.started(10.0)
        daemon.batches(rows=50, batches=5, began=10.0, ended=0.0)
        # A batch of documents: 400 passages in 2 s.
        daemon.event(
            "batch_completed",
            0.0,
            batch_id=uuid.uuid4(),
            row_count=400,
            embed_ms=2000,
            detail='{"documents": [1, 2]}',
        )
        row = status(conn)
    assert rate(row) == pytest.approx(5, abs=0.01)
    assert eta_seconds(row) == pytest.approx(20, abs=1)
    assert float(row["passages_per_second"]) == pytest.approx(200, abs=0.01)


def test_a_daemon_holding_documents_is_active(conn: Connection) -> None:
    with conn.transaction():
        document(conn, "a report", 0, "pending")
        daemon = Daemon(conn)
        daemon.started(900.0)
        conn.execute(
            "UPDATE source_documents SET state = 'claimed', claimed_by = %s,"
            " lease_expires_at = now() + interval '40 seconds'",
            (daemon.worker_id,),
        )
        row = status(conn)
    assert row["active_workers"] == 1
    assert row["documents_in_flight"] == 1


def test_the_downgrade_gives_the_view_its_columns_back(database: str, conn: Connection) -> None:
    from indexer.db import migrate

    columns = "SELECT * FROM indexer_status LIMIT 0"
    new = {"passages", "documents", "documents_failed", "passages_per_second"}
    assert new <= {c.name for c in conn.execute(columns).description or []}
    migrate.downgrade(database, "public", "0006")
    assert not new & {c.name for c in conn.execute(columns).description or []}
    assert conn.execute("SELECT to_regprocedure('retry_documents(text)') AS f").fetchone() == {
        "f": None
    }
    migrate.upgrade(database, "public")
    assert new <= {c.name for c in conn.execute(columns).description or []}
