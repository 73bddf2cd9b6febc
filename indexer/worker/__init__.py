"""The daemon: claim rows, embed them, write the vectors back, log the batch."""

from __future__ import annotations

from indexer.worker.claim import BatchResult
from indexer.worker.loop import Worker
from indexer.worker.stores import WorkStore

__all__ = ["BatchResult", "WorkStore", "Worker"]
