"""The daemon: claim rows, embed them, write the vectors back, log the batch."""

from __future__ import annotations

from indexer.worker.loop import BatchResult, Worker

__all__ = ["BatchResult", "Worker"]
