"""The pruner: old events and the vector cache, in a thread beside the worker."""

from __future__ import annotations

import numpy as np

from indexer.settings import Settings
from indexer.testing import FakeStore
from indexer.worker.prune import PRUNE_BATCH, Pruner

from ..helpers import wait_until

SETTINGS = Settings(database_url="postgresql://unused", cache_max_entries=10)


def test_one_round_prunes_events_and_the_cache_down_to_its_bound() -> None:
    store = FakeStore()
    for i in range(2 * PRUNE_BATCH + 15):
        store.cache[("k", i.to_bytes(4, "big"))] = np.zeros(8, np.float32)
    events, vectors = Pruner(store, SETTINGS).prune()
    assert (events, vectors) == (0, 2 * PRUNE_BATCH + 5)
    assert len(store.cache) == 10
    assert store.calls.count("prune_cache") == 4  # two full batches, the rest, then none


def test_the_thread_prunes_soon_after_start_and_survives_an_outage() -> None:
    store = FakeStore(down=True)
    pruner = Pruner(store, SETTINGS, every=0.05, first=0.01)
    pruner.start()
    try:
        assert wait_until(lambda: "prune_events" in store.calls, 30)  # tried while down
        store.down = False
        assert wait_until(lambda: "prune_cache" in store.calls, 30)  # a round went through
    finally:
        pruner.stop()
    assert store.calls.count("prune_events") >= 2  # retried after the outage
