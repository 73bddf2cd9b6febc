"""The one place that runs SQL against the indexer's tables (named queries)."""

from __future__ import annotations

from indexer.store.cache import CacheStats
from indexer.store.hits import DocumentHit, SearchHit
from indexer.store.listen import NOTIFY_CHANNEL, Listener
from indexer.store.queue import ClaimedRow
from indexer.store.store import Store

__all__ = [
    "NOTIFY_CHANNEL",
    "CacheStats",
    "ClaimedRow",
    "DocumentHit",
    "Listener",
    "SearchHit",
    "Store",
]
