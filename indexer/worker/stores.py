"""What the worker needs of :class:`indexer.store.Store` (a fake in unit tests:
:class:`indexer.testing.FakeStore`).

:class:`WorkStore` is the whole of it: the row queue's operations, and those of the
document work and the worker's helpers, each declared beside the code that uses it
(:class:`~indexer.worker.documents.DocumentStore`, :class:`~indexer.worker.lease.LeaseStore`,
:class:`~indexer.worker.prune.PruneStore`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from indexer.store import ClaimedRow
from indexer.worker.documents import DocumentStore
from indexer.worker.lease import LeaseStore
from indexer.worker.prune import PruneStore


class WorkSignal(Protocol):
    """Wakes the idle worker when rows need work (:class:`indexer.store.Listener`)."""

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class WorkStore(LeaseStore, PruneStore, DocumentStore, Protocol):
    """What the worker needs of :class:`indexer.store.Store` (a fake in unit tests)."""

    def listener(self) -> WorkSignal: ...

    def claim(
        self,
        worker_id: uuid.UUID,
        limit: int,
        lease_seconds: float,
        max_chars: int,
        cache_key: str | None = None,
    ) -> list[ClaimedRow]: ...

    def complete_batch(
        self,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        rows: Sequence[ClaimedRow],
        embeddings: np.ndarray,
        *,
        model: str,
        token_count: int,
        claim_ms: float,
        embed_ms: float,
        reused: Sequence[bool] | None = None,
        cache_key: str | None = None,
    ) -> list[int]: ...

    def fail_rows(
        self,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        failures: Sequence[tuple[ClaimedRow, str]],
        *,
        max_attempts: int,
        retry_base_seconds: float,
        embed_ms: float,
    ) -> list[int]: ...

    def release(self, worker_id: uuid.UUID, ids: Sequence[int]) -> None: ...

    def record_event(
        self,
        kind: str,
        worker_id: uuid.UUID,
        *,
        row_count: int = 0,
        detail: dict[str, Any] | None = None,
    ) -> None: ...
