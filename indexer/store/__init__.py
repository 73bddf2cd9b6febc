"""The one place that runs SQL against the indexer's tables (named queries)."""

from __future__ import annotations

from indexer.store.store import ClaimedRow, SearchHit, Store

__all__ = ["ClaimedRow", "SearchHit", "Store"]
