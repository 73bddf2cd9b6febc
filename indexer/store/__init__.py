"""The one place that runs SQL against the indexer's tables (named queries)."""

from __future__ import annotations

from indexer.store.listen import NOTIFY_CHANNEL, Listener
from indexer.store.store import CacheStats, ClaimedRow, DocumentHit, SearchHit, Store

__all__ = [
    "NOTIFY_CHANNEL",
    "CacheStats",
    "ClaimedRow",
    "DocumentHit",
    "Listener",
    "SearchHit",
    "Store",
]
