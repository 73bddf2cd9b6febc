"""The Store's pool: shared by threads, surviving killed sessions, search widths, and
the checks that turn a bad database into one clear line.  Real PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import pytest

from indexer.db.connect import Connection
from indexer.exceptions import DatabaseUnavailable, ExtensionMissing, SchemaNotMigrated
from indexer.store import Store
from indexer.store.store import EF_SEARCH


def load_vectors(conn: Connection, count: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with conn.cursor().copy("COPY chunks (content, metadata, embedding) FROM STDIN") as copy:
        for i, v in enumerate(vectors):
            meta = json.dumps({"even": i % 2 == 0})
            copy.write_row((f"row {i}", meta, "[" + ",".join(f"{x:.6f}" for x in v) + "]"))
    return vectors


def test_one_store_serves_many_threads_at_once(database: str, conn: Connection) -> None:
    vectors = load_vectors(conn, 200)
    with Store(database, "public", pool_size=3) as store:

        def nearest(i: int) -> int:
            return store.search(vectors[i], 1)[0].id

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = list(pool.map(nearest, range(64)))
    assert found == [i + 1 for i in range(64)]  # each vector finds its own row


def test_killed_sessions_are_replaced_before_the_next_call(database: str, conn: Connection) -> None:
    with Store(database, "public", pool_size=2) as store:
        assert store.queue_status()["backlog"] == 0
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        assert killed is not None and killed["n"] >= 1
        # The pool's check finds the dead connection and opens a new one: no error.
        assert store.queue_status()["backlog"] == 0


def test_more_rows_than_ef_search_widen_that_search_only(database: str, conn: Connection) -> None:
    vectors = load_vectors(conn, 400)
    with Store(database, "public") as store:
        assert len(store.search(vectors[0], EF_SEARCH + 50)) == EF_SEARCH + 50
        assert len(store.search(vectors[0], 10)) == 10
        filtered = store.search(vectors[0], 30, metadata_filter={"even": False})
        assert len(filtered) == 30 and all(h.metadata == {"even": False} for h in filtered)
        # The wider setting did not outlive its statement's transaction.
        with store._connection("test") as pooled:
            shown = pooled.execute("SHOW hnsw.ef_search").fetchone()
        assert shown is not None and shown["hnsw.ef_search"] == str(EF_SEARCH)


def test_a_database_without_pgvector_says_so(empty_database: str) -> None:
    with Store(empty_database, "public") as store, pytest.raises(ExtensionMissing):
        store.status()


def test_a_missing_schema_is_named(database: str) -> None:
    with Store(database, "elsewhere") as store, pytest.raises(SchemaNotMigrated) as caught:
        store.status()
    assert "run `indexer migrate`" in str(caught.value)


def test_an_unreachable_database_is_one_line(tmp_path: object) -> None:
    dsn = f"postgresql://postgres@/indexer?host={tmp_path}/nowhere"
    with Store(dsn, "public", timeout=1.0) as store, pytest.raises(DatabaseUnavailable) as caught:
        store.status()
    assert "\n" not in str(caught.value)
