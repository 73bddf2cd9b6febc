"""The real worker loop against an in-memory store and a model-free embedder.

No database and no model: these pin down the loop's bookkeeping (claims cut into
batches shortest first, isolation of a bad row, stop and outage handling) quickly and
exactly; the integration tests run the same loop on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid

import numpy as np
import numpy.typing as npt
import pytest

from indexer.embedding import Tokenized
from indexer.exceptions import EmbeddingError
from indexer.settings import Settings
from indexer.testing import FakeEmbedder, FakeStore, FaultInjector
from indexer.worker import BatchResult, Worker

from ..helpers import wait_until

SETTINGS = Settings(
    database_url="postgresql://unused",
    batch_size=3,
    claim_size=8,
    lease_seconds=30,
    poll_interval=0.05,
    max_attempts=2,
    db_down_timeout=60,
)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def run(store: FakeStore, embedder: FakeEmbedder | FaultInjector | None = None) -> Worker:
    worker = Worker(SETTINGS, store, embedder or FakeEmbedder())
    worker.run(once=True)
    return worker


def test_a_claim_is_cut_into_batches_shortest_first_and_every_row_written_once() -> None:
    store = FakeStore()
    ids = store.add(*(words(n) for n in (5, 1, 7, 3, 2, 6, 4, 8, 9, 10)))
    embedder = FakeEmbedder()
    results: list[BatchResult] = []
    worker = Worker(SETTINGS, store, embedder, on_batch=results.append)
    worker.run(once=True)
    assert all(store.rows[i].state == "embedded" for i in ids)
    # First claim: 8 rows, in batches of 3, 3, 2, each shortest first; then the rest.
    lengths = [[len(t.split()) for t in call] for call in embedder.calls]
    assert lengths == [[1, 2, 3], [4, 5, 6], [7, 8], [9, 10]]
    written = [i for r in results for i in r.written]
    assert sorted(written) == ids and len(written) == len(set(written))
    for i in ids:
        vector = store.rows[i].embedding
        assert vector is not None
        assert np.allclose(vector, FakeEmbedder.vector(store.rows[i].content))
    kinds = [e["kind"] for e in store.events]
    assert kinds[0] == "worker_started" and kinds[-1] == "worker_stopped"
    assert kinds.count("batch_completed") == 4


def test_a_bad_row_is_isolated_and_the_others_are_written_in_the_same_pass() -> None:
    store = FakeStore()
    ids = store.add("good one", "good two", "BAD row", "good three")
    worker = run(store, FaultInjector(FakeEmbedder(), "BAD"))
    bad = ids[2]
    assert store.rows[bad].state == "pending" and store.rows[bad].attempts == 1
    assert "injected failure" in (store.rows[bad].last_error or "")
    assert all(store.rows[i].state == "embedded" for i in ids if i != bad)
    assert worker.rows_written == 3


def test_a_row_changed_in_flight_is_not_written() -> None:
    store = FakeStore()
    (cid,) = store.add("first text")

    def edit(name: str) -> None:
        if name == "complete_batch":
            store.rows[cid].content, store.rows[cid].version = "second text", 2
            store.before = None

    store.before = edit
    results: list[BatchResult] = []
    worker = Worker(SETTINGS, store, FakeEmbedder(), on_batch=results.append)
    worker.run(once=True)
    assert results[0].written == [] and results[0].stale == 1
    assert store.rows[cid].embedding is None


def test_a_stop_between_batches_gives_the_rest_of_the_claim_back() -> None:
    store = FakeStore()
    ids = store.add(*(words(n) for n in range(1, 9)))
    worker = Worker(SETTINGS, store, FakeEmbedder(), on_batch=lambda _: worker.stop())
    worker.run(once=True)
    states = [store.rows[i].state for i in ids]
    assert states == ["embedded"] * 3 + ["pending"] * 5
    assert all(store.rows[i].claimed_by is None for i in ids)


def test_an_outage_mid_claim_writes_the_batch_once_and_releases_the_rest() -> None:
    store = FakeStore()
    ids = store.add(*(words(n) for n in range(1, 9)))
    writes = 0

    def outage(name: str) -> None:
        nonlocal writes
        if name == "complete_batch":
            writes += 1
            # The second write fails once: the database went away mid-claim.
            store.down = writes == 2
        elif store.down and name != "complete_batch":
            store.down = False

    store.before = outage
    results: list[BatchResult] = []
    worker = Worker(SETTINGS, store, FakeEmbedder(), on_batch=results.append)
    worker.run(once=True)
    assert all(store.rows[i].state == "embedded" for i in ids)
    written = [i for r in results for i in r.written]
    assert sorted(written) == ids  # each row written exactly once
    # After the outage the rest of the first claim was released and claimed again.
    assert "release" in store.calls
    assert store.calls.index("release") > store.calls.index("complete_batch")


class Exploding(FakeEmbedder):
    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        raise EmbeddingError("the model is gone")


def test_a_model_that_always_fails_parks_rows_after_max_attempts() -> None:
    store = FakeStore()
    (cid,) = store.add("doomed")
    for _ in range(SETTINGS.max_attempts):
        run(store, Exploding())
        store.retry_now()
    assert store.rows[cid].state == "failed"
    assert store.rows[cid].last_error == "the model is gone"


def test_the_loop_waits_for_work_and_stops_on_request() -> None:
    store = FakeStore()
    worker = Worker(SETTINGS, store, FakeEmbedder())
    thread = threading.Thread(target=worker.run)
    thread.start()
    (cid,) = store.add("arrives later")
    embedded = wait_until(lambda: store.rows[cid].state == "embedded", 30)
    worker.stop()
    thread.join(30)
    assert not thread.is_alive()
    assert embedded


def test_equal_texts_share_one_model_input_and_reuse_is_counted() -> None:
    store = FakeStore()
    store.add("same", words(4), "same", "same", words(2))
    embedder = FakeEmbedder()
    results: list[BatchResult] = []
    worker = Worker(SETTINGS, store, embedder, on_batch=results.append)
    worker.run(once=True)
    embedded = [t for call in embedder.calls for t in call]
    assert sorted(embedded) == sorted(["same", words(4), words(2)])
    assert all(r.state == "embedded" for r in store.rows.values())
    assert sum(r.reused for r in results) == 2
    for row in store.rows.values():
        assert row.embedding is not None
        assert np.allclose(row.embedding, FakeEmbedder.vector(row.content))


def test_cached_texts_cost_no_model_call_and_are_written_first() -> None:
    store = FakeStore()
    store.add("old one", "old two")
    run(store)
    store.add("new", "old two", "old one")
    embedder = FakeEmbedder()
    results: list[BatchResult] = []
    Worker(SETTINGS, store, embedder, on_batch=results.append).run(once=True)
    assert embedder.calls == [("new",)]
    assert [(r.written, r.reused, r.tokens) for r in results] == [([4, 5], 2, 0), ([3], 0, 3)]


def test_with_the_cache_off_nothing_is_kept_or_reused() -> None:
    off = Settings(**{**SETTINGS.__dict__, "cache": False})
    store = FakeStore()
    store.add("text", "text")
    embedder = FakeEmbedder()
    Worker(off, store, embedder).run(once=True)
    assert store.cache == {}
    assert [t for call in embedder.calls for t in call] == ["text"]  # still deduplicated


def test_rows_taken_over_by_another_daemon_are_not_embedded() -> None:
    store = FakeStore()
    ids = store.add(*(words(n + 1) for n in range(8)))
    other = uuid.uuid4()
    taken = set(ids[3:6])

    def take_over(name: str) -> None:
        # After the first batch's write, another daemon takes over three rows whose lease
        # ran out (this one was stopped, say).
        if name == "complete_batch" and store.calls.count("complete_batch") == 1:
            for i in taken:
                store.rows[i].claimed_by = other

    store.before = take_over
    embedder = FakeEmbedder()
    run(store, embedder)
    embedded = {t for call in embedder.calls for t in call}
    assert embedded.isdisjoint({store.rows[i].content for i in taken})
    assert {i for i, r in store.rows.items() if r.state == "embedded"} == set(ids) - taken


def test_the_start_says_how_documents_are_cut_and_how_to_cut_them_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = dataclasses.replace(SETTINGS, chunk_tokens=120, chunk_overlap=10)
    with caplog.at_level(logging.INFO, logger="indexer.worker.loop"):
        Worker(settings, FakeStore(), FakeEmbedder()).run(once=True)
    started = [r.getMessage() for r in caplog.records if "starting" in r.getMessage()]
    assert len(started) == 1
    assert "passages of 120 tokens, 10 overlapping" in started[0]
    assert "indexer sources recut" in started[0]
