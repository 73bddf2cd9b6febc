"""A model added to a large corpus gets its HNSW index after its fill (migration 0011):
built by a daemon with CREATE INDEX CONCURRENTLY, one build at a time, a cut-off build
replaced, a build cancelled by drop_model and by a stopping daemon; activation waits
for the index unless forced."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from indexer.db import migrate
from indexer.db.connect import Connection
from indexer.embedding import Embedder
from indexer.embedding.background import NICE
from indexer.exceptions import DatabaseUnavailable, InvalidInput
from indexer.settings import Settings
from indexer.store import Store
from indexer.worker import Worker
from indexer.worker.indexes import IndexBuilder

from ..helpers import wait_until
from .test_model_registry import _add, _worker, second, store

FIXTURES = Path(__file__).parent.parent / "fixtures" / "models"


# The fixtures (by name) and helpers of the registry's own tests.
__all__ = ["second", "store"]


def _embedded_then_added(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, texts: list[str]
) -> int:
    """``texts`` embedded by the first model, then tiny-cls added with its index left
    for after the fill; its id."""
    store.insert_chunks(texts, ["{}"] * len(texts))
    _worker(settings, store, embedder).run(once=True)
    return _add_deferred(store, second)


def _add_deferred(store: Store, second: Embedder) -> int:
    """tiny-cls, its index left for after the fill (as on a corpus of 10,000 chunks)."""
    return _add(store, second, defer_index_at=1)


def _state(conn: Connection, model_id: int) -> str:
    row = conn.execute("SELECT model_index(%s) AS state", (model_id,)).fetchone()
    assert row is not None
    return str(row["state"])


def _indexes(conn: Connection, model_id: int) -> list[tuple[str, bool]]:
    """The model table's indexes other than its key: (name, valid)."""
    rows = conn.execute(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = %s::regclass AND NOT i.indisprimary ORDER BY 1",
        (f"model_{model_id}_vectors",),
    ).fetchall()
    return [(r["relname"], r["indisvalid"]) for r in rows]


def _builder_pid(conn: Connection, model_id: int) -> int | None:
    row = conn.execute(
        "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.objsubid = 2 AND l.classid = model_index_lock()::oid AND l.objid = %s::oid",
        (model_id,),
    ).fetchone()
    return None if row is None else int(row["pid"])


@contextlib.contextmanager
def _old_snapshot(database: str) -> Iterator[psycopg.Connection[object]]:
    """A transaction holding a snapshot: CREATE INDEX CONCURRENTLY builds the index, then
    waits for it to end before the index is valid (a build in progress, for as long as
    the test needs)."""
    with psycopg.connect(database) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")
        yield holder
        holder.rollback()


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _fill_only(worker: Worker) -> None:
    """The fill's work, and nothing else of a daemon's (its index is not built)."""
    try:
        worker.models.refresh(force=True)
        while worker.fill.step():
            pass
        worker.fill.flush()
    finally:
        worker.listener.close()


def _building(conn: Connection, model_id: int) -> bool:
    return _state(conn, model_id) == "building" and bool(_indexes(conn, model_id))


def test_a_model_added_to_a_large_corpus_is_indexed_after_its_fill(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, conn: Connection
) -> None:
    texts = [f"note {i} about the {['sea', 'hills', 'town'][i % 3]}" for i in range(40)]
    model_id = _embedded_then_added(settings, store, embedder, second, texts)
    assert _indexes(conn, model_id) == [] and _state(conn, model_id) == "none"
    status = {r["model"]: r for r in store.model_status()}
    assert status["tiny-cls"]["index"] == store.model_index_state("tiny-cls") == "none"
    assert store.model_index_state("no such model") is None
    # Not due while the fill has the earlier chunks still to queue or embed.
    assert store.models_to_index(slack=0) == []
    store.fill_model(model_id, batch=10)
    assert store.models_to_index(slack=39) == []  # ten chunks of earlier text queued

    # `run --once` fills the model, then builds its index before it exits.
    _worker(settings, store, embedder).run(once=True)
    assert _indexes(conn, model_id) == [(f"model_{model_id}_vectors_embedding_idx", True)]
    assert _state(conn, model_id) == "ready" and store.models_to_index(slack=0) == []
    assert store.model_index_state("tiny-cls") == "ready"
    assert store.activate_model("tiny-cls") == 0
    # The search plan uses the index built after the fill.
    query = second.embed_queries(["the sea"])[0]
    conn.execute("SET enable_seqscan = off")  # 40 rows: a scan would be cheaper
    plan = "\n".join(
        str(r["QUERY PLAN"])
        for r in conn.execute(
            "EXPLAIN SELECT chunk_id FROM model_2_vectors ORDER BY embedding <=> %s LIMIT 5",
            (query,),
        ).fetchall()
    )
    assert f"model_{model_id}_vectors_embedding_idx" in plan
    assert len(store.search(query, 5)) == 5


def test_activation_waits_for_the_index_unless_forced(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, conn: Connection
) -> None:
    model_id = _embedded_then_added(settings, store, embedder, second, ["one", "two", "three"])
    # Every vector written, the index not built yet (no daemon has looked).
    _fill_only(_worker(settings, store, embedder))
    assert {r["model"]: r["missing"] for r in store.model_status()}["tiny-cls"] == 0
    with pytest.raises(InvalidInput, match="its HNSW index is not built yet: wait for a running"):
        store.activate_model("tiny-cls")
    # Forced: active at once, searched by reading every vector, and built first.
    assert store.activate_model("tiny-cls", force=True) == 0
    assert len(store.search(second.embed_queries(["one"])[0], 3)) == 3
    assert [w.name for w in store.models_to_index(slack=0)] == ["tiny-cls"]
    assert IndexBuilder(store).build_due() == 1
    assert _state(conn, model_id) == "ready"
    assert IndexBuilder(store).build_due() == 0


def test_an_index_is_built_at_once_below_the_threshold(
    store: Store, second: Embedder, conn: Connection
) -> None:
    store.insert_chunks(["one"], ["{}"])
    model_id = _add(store, second)
    assert _indexes(conn, model_id) == [(f"model_{model_id}_vectors_embedding_idx", True)]
    assert store.activate_model("tiny-cls", force=True) == 0  # no vector: forced


def test_one_build_at_a_time_and_a_cut_off_build_is_replaced(
    settings: Settings,
    store: Store,
    embedder: Embedder,
    second: Embedder,
    conn: Connection,
    database: str,
) -> None:
    model_id = _embedded_then_added(
        settings, store, embedder, second, [f"text {i}" for i in range(20)]
    )
    _fill_only(_worker(settings, store, embedder))

    with _old_snapshot(database):
        thread, errors = _in_thread(IndexBuilder(store).build_due)
        assert wait_until(lambda: _building(conn, model_id), 60)
        assert _indexes(conn, model_id) == [(f"model_{model_id}_vectors_embedding_idx", False)]
        # Another daemon leaves it to the one that builds it.
        assert IndexBuilder(store).build_due() == 0
        with pytest.raises(InvalidInput, match="its HNSW index is being built"):
            store.activate_model("tiny-cls")
        # The build's backend is killed (as by a server restart): its invalid index stays.
        pid = _builder_pid(conn, model_id)
        assert pid is not None
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(60)
    assert len(errors) == 1 and isinstance(errors[0], DatabaseUnavailable)
    assert _state(conn, model_id) == "broken"
    with pytest.raises(InvalidInput, match="its HNSW index is not built yet"):
        store.activate_model("tiny-cls")

    # The next build drops what the cut-off one left, and builds it again.
    assert [w.state for w in store.models_to_index()] == ["broken"]
    assert IndexBuilder(store).build_due() == 1
    assert _indexes(conn, model_id) == [(f"model_{model_id}_vectors_embedding_idx", True)]
    assert store.activate_model("tiny-cls") == 0


def test_drop_model_and_a_stopping_daemon_cancel_a_build(
    settings: Settings,
    store: Store,
    embedder: Embedder,
    second: Embedder,
    conn: Connection,
    database: str,
) -> None:
    model_id = _embedded_then_added(
        settings, store, embedder, second, [f"text {i}" for i in range(20)]
    )
    with _old_snapshot(database):
        builder = IndexBuilder(store)
        thread, errors = _in_thread(builder.build_due)
        assert wait_until(lambda: _building(conn, model_id), 60)
        builder.stop()  # the daemon stops: its build is cancelled
        thread.join(60)
        assert not thread.is_alive() and errors == []
        assert _state(conn, model_id) == "broken"

        thread, errors = _in_thread(IndexBuilder(store).build_due)
        assert wait_until(lambda: _building(conn, model_id), 60)
        store.drop_model("tiny-cls")  # does not wait for the build: cancels it
        thread.join(60)
        assert not thread.is_alive() and errors == []
    assert [m.name for m in store.models()] == [embedder.name]
    assert conn.execute("SELECT to_regclass('model_2_vectors') AS t").fetchone() == {"t": None}


def test_the_build_runs_at_the_lowest_cpu_priority(
    settings: Settings,
    store: Store,
    embedder: Embedder,
    second: Embedder,
    conn: Connection,
    database: str,
) -> None:
    model_id = _embedded_then_added(settings, store, embedder, second, ["one"])
    store.activate_model("tiny-cls", force=True)
    with _old_snapshot(database):
        thread, errors = _in_thread(IndexBuilder(store).build_due)
        assert wait_until(lambda: _building(conn, model_id), 60)
        pid = _builder_pid(conn, model_id)
        assert pid is not None
        assert os.getpriority(os.PRIO_PROCESS, pid) == NICE
    thread.join(60)
    assert errors == [] and _state(conn, model_id) == "ready"
    # The other backends keep the server's priority.
    own = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert own is not None and os.getpriority(os.PRIO_PROCESS, own["pid"]) == 0


def test_a_daemon_builds_a_due_index_while_it_runs(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, conn: Connection
) -> None:
    model_id = _embedded_then_added(settings, store, embedder, second, ["one", "two"])
    worker = _worker(settings, store, embedder)
    worker.indexes.every = 0.05
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: _state(conn, model_id) == "ready", 60)
    finally:
        worker.stop()
        runner.join(30)
    assert store.activate_model("tiny-cls") == 0


def test_the_downgrade_builds_every_deferred_index_and_the_upgrade_keeps_them(
    settings: Settings,
    store: Store,
    embedder: Embedder,
    second: Embedder,
    conn: Connection,
    database: str,
) -> None:
    model_id = _embedded_then_added(settings, store, embedder, second, ["one", "two"])
    _fill_only(_worker(settings, store, embedder))
    assert _indexes(conn, model_id) == []
    store.close()
    migrate.downgrade(database, "public", "0010")
    # 0010 knew no deferred index: the downgrade built it.
    assert _indexes(conn, model_id) == [(f"model_{model_id}_vectors_embedding_idx", True)]
    with Store(database, "public", check=False) as old:
        assert old.activate_model("tiny-cls") == 0
    migrate.upgrade(database, "public")
    assert _state(conn, model_id) == "ready"
    with Store(database, "public") as new:
        assert new.activate_model(embedder.name) == 0
        assert [m["index"] for m in new.model_status()] == ["ready", "ready"]


def test_a_background_store_runs_its_statements_in_niced_backends(database: str) -> None:
    """The daemon's fill claims and writes through such a store: in PostgreSQL too, the
    work that may wait gives way to searches and new rows."""
    with Store(database, "public", background=True) as low, Store(database, "public") as normal:
        for store, nice in ((low, NICE), (normal, 0)):
            with store._connection("reading the backend's pid") as c:
                row = c.execute("SELECT pg_backend_pid() AS pid").fetchone()
            assert row is not None and os.getpriority(os.PRIO_PROCESS, row["pid"]) == nice
