"""The vector cache: real model, real PostgreSQL, the real worker loop and store."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.app import Indexer
from indexer.db.connect import Connection
from indexer.embedding import Embedder
from indexer.settings import Settings
from indexer.store import ClaimedRow, Store
from indexer.testing import CountingEmbedder
from indexer.worker import Worker

from .test_worker import drain, insert, vector_of


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def with_(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)


def batches(conn: Connection) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT row_count, reused_count, token_count, chunk_ids FROM events"
        " WHERE kind = 'batch_completed' ORDER BY id"
    ).fetchall()


def test_a_reinserted_text_reuses_its_vector_exactly(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    texts = ["the licence header of every file", "a paragraph that is re-imported"]
    first = insert(conn, *texts)
    drain(settings, embedder)
    conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (first,))
    counting = CountingEmbedder(embedder)
    again = insert(conn, *texts)
    worker = drain(settings, counting)
    assert counting.texts == []  # no model call at all
    assert worker.rows_written == 2
    fresh = embedder.embed(texts)
    for cid, want, text in zip(again, fresh, texts, strict=True):
        got = vector_of(conn, cid)
        assert got is not None
        assert float(np.dot(got, want)) > 0.99999
        row = conn.execute("SELECT content_hash FROM chunks WHERE id = %s", (cid,)).fetchone()
        assert row == {"content_hash": sha(text)}
    last = batches(conn)[-1]
    assert (last["row_count"], last["reused_count"], last["token_count"]) == (2, 2, 0)
    status = conn.execute("SELECT cache_hit_rate, rows_reused_last_hour FROM indexer_status")
    assert status.fetchone() == {"cache_hit_rate": 0.5, "rows_reused_last_hour": 2}


def test_equal_texts_in_one_claim_are_embedded_once(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    ids = insert(conn, *(["boilerplate footer"] * 5 + ["a text of its own"]))
    counting = CountingEmbedder(embedder)
    drain(settings, counting)
    assert sorted(counting.texts) == ["a text of its own", "boilerplate footer"]
    assert all(vector_of(conn, i) is not None for i in ids)
    assert [(b["row_count"], b["reused_count"]) for b in batches(conn)] == [(6, 4)]
    entries = conn.execute("SELECT count(*) AS n FROM vector_cache").fetchone()
    assert entries == {"n": 2}


def test_cached_rows_are_written_first_then_the_rest_is_embedded(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    insert(conn, "seen before one", "seen before two")
    drain(settings, embedder)
    counting = CountingEmbedder(embedder)
    ids = insert(conn, "new text", "seen before two", "another new text", "seen before one")
    drain(settings, counting)
    assert sorted(counting.texts) == ["another new text", "new text"]
    reused, fresh = batches(conn)[-2:]
    assert (reused["reused_count"], sorted(reused["chunk_ids"])) == (2, [ids[1], ids[3]])
    assert (fresh["reused_count"], sorted(fresh["chunk_ids"])) == (0, [ids[0], ids[2]])


class ChangingStore(Store):
    """A real Store whose first write of a reused vector is preceded by an application
    UPDATE of that row's text (the test hook: the change lands while the claim is in
    flight)."""

    def __init__(self, *args: Any, conn: Connection, new_text: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = conn
        self.new_text = new_text
        self.done = False

    def complete_batch(self, *args: Any, **kwargs: Any) -> list[int]:
        rows: Sequence[ClaimedRow] = args[2]
        if not self.done and any(kwargs.get("reused") or ()):
            self.done = True
            self.conn.execute(
                "UPDATE chunks SET content = %s WHERE id = %s", (self.new_text, rows[0].id)
            )
        return super().complete_batch(*args, **kwargs)


def test_a_text_changed_in_flight_never_gets_the_old_texts_cached_vector(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    insert(conn, "the old text")
    drain(settings, embedder)
    (cid,) = insert(conn, "the old text")
    assert settings.database_url is not None
    store = ChangingStore(settings.database_url, "public", conn=conn, new_text="a brand new text")
    with store:
        worker = Worker(settings, store, embedder)
        worker.run(once=True)
    assert store.done
    got = vector_of(conn, cid)
    assert got is not None
    want = embedder.embed(["a brand new text"])[0]
    assert float(np.dot(got, want)) > 0.99999
    stale = conn.execute(
        "SELECT (detail->>'stale')::int AS stale, reused_count FROM events"
        " WHERE kind = 'batch_completed' ORDER BY id"
    ).fetchall()
    # The reused vector was refused by the write's guard; the new text was embedded.
    assert stale[-2:] == [{"stale": 1, "reused_count": 0}, {"stale": 0, "reused_count": 0}]


def test_other_models_variants_and_truncations_never_share_a_vector(
    settings: Settings, embedder: Embedder, model_cache: Path, conn: Connection
) -> None:
    int8 = Embedder(cache_dir=model_cache, variant="int8")
    shorter = Embedder(cache_dir=model_cache, max_tokens=128)
    keys = {embedder.cache_key, int8.cache_key, shorter.cache_key}
    assert len(keys) == 3
    assert embedder.cache_key == Embedder(cache_dir=model_cache).cache_key

    text = "a sentence embedded by two variants of the model"
    first = insert(conn, text)
    drain(settings, embedder)
    conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (first,))
    (cid,) = insert(conn, text)
    counting = CountingEmbedder(int8)
    drain(with_(settings, model_variant="int8"), counting)
    assert counting.texts == [text]  # the fp32 vector was not reused
    got = vector_of(conn, cid)
    assert got is not None
    assert float(np.dot(got, int8.embed([text])[0])) > 0.99999
    models = conn.execute("SELECT model FROM vector_cache ORDER BY model").fetchall()
    assert sorted(m["model"] for m in models) == sorted([embedder.cache_key, int8.cache_key])


def test_a_different_max_chars_reuses_only_for_the_same_input(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    text = "x" * 40 + " and then the part that only a longer cut reads"
    cut = with_(settings, max_chars=40)
    first = insert(conn, text)
    drain(cut, embedder)
    conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (first,))
    second = insert(conn, text)
    counting = CountingEmbedder(embedder)
    drain(with_(settings, max_chars=200), counting)
    assert counting.texts == [text]  # another input: embedded, not reused
    conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (second,))
    insert(conn, text)
    counting = CountingEmbedder(embedder)
    drain(cut, counting)
    assert counting.texts == []  # the same 40 characters: reused


def test_the_cache_off_keeps_and_reuses_nothing(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    off = with_(settings, cache=False)
    first = insert(conn, "private text")
    drain(off, embedder)
    assert conn.execute("SELECT count(*) AS n FROM vector_cache").fetchone() == {"n": 0}
    drain(settings, embedder)  # nothing pending; fill the cache another way:
    conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (first,))
    insert(conn, "private text")
    drain(settings, embedder)
    insert(conn, "private text")
    counting = CountingEmbedder(embedder)
    drain(off, counting)
    assert counting.texts == ["private text"]  # cached, but off means not reused


def fill_cache(conn: Connection, count: int, model: str = "test:1") -> None:
    """``count`` entries with used_at one day apart (entry 0 the least recently used)."""
    conn.execute(
        "INSERT INTO vector_cache (model, hash, embedding, used_at)"
        " SELECT %s, sha256(int8send(i)), array_fill(0.05, ARRAY[384])::vector,"
        "        now() - make_interval(days => %s - i)"
        " FROM generate_series(0, %s - 1) i",
        (model, count, count),
    )


def test_prune_takes_the_least_recently_used_and_the_unused(
    settings: Settings, conn: Connection
) -> None:
    fill_cache(conn, 30)
    assert settings.database_url is not None
    with Store(settings.database_url, "public") as store:
        # 30 entries used 30 ... 1 days ago: 10 unused for 20.5 days or more go first.
        assert store.prune_cache(20.5 * 86400, 1000, batch=4) == 4
        while store.prune_cache(20.5 * 86400, 1000, batch=4):
            pass
        left = conn.execute("SELECT count(*) AS n FROM vector_cache").fetchone()
        assert left == {"n": 20}
        # Then size: keep the 15 most recently used.
        while store.prune_cache(365 * 86400, 15, batch=4):
            pass
        kept = conn.execute(
            "SELECT min(now() - used_at) AS newest, max(now() - used_at) AS oldest,"
            " count(*) AS n FROM vector_cache"
        ).fetchone()
        assert kept is not None
        assert kept["n"] == 15
        assert kept["oldest"].days == 15


def test_purge_by_text_id_and_hash_and_clear(settings: Settings, embedder: Embedder) -> None:
    with Indexer(settings, embedder=embedder) as ix:
        ids = ix.add(["secret one", "secret two", "secret three", "public"])
        assert settings.database_url is not None
        drain(settings, embedder)
        assert ix.cache_stats().entries == 4
        assert ix.purge_cache(texts=["secret one"]) == 1
        assert ix.purge_cache(ids=[ids[1]]) == 1
        assert ix.purge_cache(hashes=[sha("secret three"), sha("never cached")]) == 1
        assert ix.purge_cache(texts=["secret one"]) == 0
        stats = ix.cache_stats()
        assert stats.entries == 1
        assert stats.models == {embedder.cache_key: 1}
        assert stats.bytes > 0
        assert (stats.rows_written, stats.rows_reused, stats.hit_rate) == (4, 0, 0.0)
        ix.clear_cache()
        assert ix.cache_stats().entries == 0


def test_pruning_under_load_loses_no_row(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    texts = [f"row {i} with words that repeat {i % 40}" for i in range(300)]
    texts += texts[:100]  # a third of the rows repeat a text
    insert(conn, *texts)
    assert settings.database_url is not None
    stop = threading.Event()
    pruned = [0]

    def prune() -> None:
        assert settings.database_url is not None
        with Store(settings.database_url, "public") as store:
            while not stop.is_set():
                pruned[0] += store.prune_cache(0.0, 1, batch=50)

    pruner = threading.Thread(target=prune)
    pruner.start()
    try:
        worker = drain(with_(settings, batch_size=16, claim_size=64), embedder)
    finally:
        stop.set()
        pruner.join()
    assert worker.rows_written == len(texts)
    rows = conn.execute("SELECT content, embedding, state FROM chunks ORDER BY id").fetchall()
    assert {r["state"] for r in rows} == {"embedded"}
    fresh = embedder.embed([r["content"] for r in rows])
    stored = np.stack([r["embedding"].to_numpy() for r in rows])
    assert float(np.sum(fresh * stored, axis=1).min()) > 0.9999
    assert pruned[0] > 0
    written = conn.execute(
        "SELECT sum(row_count) AS n FROM events WHERE kind = 'batch_completed'"
    ).fetchone()
    assert written == {"n": len(texts)}


def test_a_claim_returns_hash_and_cached_vector(settings: Settings, conn: Connection) -> None:
    fill_cache(conn, 0)
    conn.execute(
        "INSERT INTO vector_cache (model, hash, embedding)"
        " VALUES ('k:1', sha256(convert_to('hello', 'UTF8')), array_fill(0.5, ARRAY[384]))"
    )
    insert(conn, "hello", "world")
    assert settings.database_url is not None
    with Store(settings.database_url, "public") as store:
        rows = store.claim(uuid.uuid4(), 10, 30, 1000, "k:1")
        assert [r.hash for r in rows] == [sha("hello"), sha("world")]
        assert rows[0].cached is not None and rows[1].cached is None
        assert np.allclose(rows[0].cached, 0.5)
        store.release(uuid.uuid4(), [])
    with Store(settings.database_url, "public") as store:
        conn.execute("UPDATE chunks SET state = 'pending', claimed_by = NULL")
        other = store.claim(uuid.uuid4(), 10, 30, 1000, "k:2")
        assert [r.cached for r in other] == [None, None]
        conn.execute("UPDATE chunks SET state = 'pending', claimed_by = NULL")
        off = store.claim(uuid.uuid4(), 10, 30, 1000, None)
        assert [r.cached for r in off] == [None, None]


@pytest.mark.parametrize("text", ["ascii", "émoji 👍🏽 and ünïcode", "right-to-left שלום"])
def test_the_sql_hash_is_the_utf8_sha256_of_the_text_read(
    settings: Settings, conn: Connection, text: str
) -> None:
    insert(conn, text)
    assert settings.database_url is not None
    with Store(settings.database_url, "public") as store:
        (row,) = store.claim(uuid.uuid4(), 10, 30, 5, None)
    assert row.content == text[:5]
    assert row.hash == sha(text[:5])
