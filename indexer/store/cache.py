"""The vector cache's maintenance: its statistics, pruning and purging.

A mixin of :class:`indexer.store.Store`; the cache is filled and read by the queues
(:mod:`indexer.store.queue`, :mod:`indexer.store.documents`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from indexer.store.protocol import Executes


@dataclass(frozen=True)
class CacheStats:
    """What ``indexer cache stats`` shows: size, and how much of the work it saved."""

    entries: int
    bytes: int
    models: dict[str, int]
    least_recently_used: Any
    rows_written: int
    rows_reused: int
    rows_written_last_hour: int
    rows_reused_last_hour: int
    since: Any

    @property
    def hit_rate(self) -> float | None:
        """Share of the rows written (in the events kept) whose vector was reused."""
        return self.rows_reused / self.rows_written if self.rows_written else None

    @property
    def hit_rate_last_hour(self) -> float | None:
        if not self.rows_written_last_hour:
            return None
        return self.rows_reused_last_hour / self.rows_written_last_hour


class CacheQueries:
    """The Store's vector cache (see the module docstring)."""

    def prune_cache(
        self: Executes, max_age_seconds: float, max_entries: int, batch: int = 5000
    ) -> int:
        """Delete at most ``batch`` entries unused for ``max_age_seconds``, or else at
        most ``batch`` of the least recently used beyond ``max_entries``; how many.

        One short statement: call again until it returns 0 (the pruner does)."""
        pruned = int(
            self._one("prune_cache_age", {"max_age_seconds": max_age_seconds, "batch": batch})[
                "pruned"
            ]
        )
        if pruned:
            return pruned
        params = {"max_entries": max_entries, "batch": batch}
        return int(self._one("prune_cache_size", params)["pruned"])

    def cache_stats(self: Executes) -> CacheStats:
        r = self._one("cache_stats")
        return CacheStats(
            entries=int(r["entries"]),
            bytes=int(r["bytes"]),
            models={str(k): int(v) for k, v in r["models"].items()},
            least_recently_used=r["least_recently_used"],
            rows_written=int(r["rows_written"]),
            rows_reused=int(r["rows_reused"]),
            rows_written_last_hour=int(r["rows_written_last_hour"]),
            rows_reused_last_hour=int(r["rows_reused_last_hour"]),
            since=r["since"],
        )

    def cache_purge(
        self: Executes,
        *,
        texts: Sequence[str] = (),
        hashes: Sequence[bytes] = (),
        ids: Sequence[int] = (),
        max_chars: int,
    ) -> int:
        """Delete the cached vectors of these texts, hashes and rows (every model)."""
        params = {
            "texts": list(texts),
            "hashes": list(hashes),
            "ids": list(ids),
            "max_chars": max_chars,
        }
        return int(self._one("cache_purge", params)["purged"])

    def cache_clear(self: Executes) -> None:
        self._execute("cache_clear")
