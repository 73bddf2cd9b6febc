"""What the worker needs of :class:`indexer.store.Store` (a fake in unit tests:
:class:`indexer.testing.FakeStore`).

:class:`WorkStore` is the whole of it: the row queue's operations, the document
queue's (:class:`DocumentStore`), and those of the worker's helpers, each declared
beside the helper that uses it (:class:`~indexer.worker.lease.LeaseStore`,
:class:`~indexer.worker.prune.PruneStore`, :class:`~indexer.worker.backfill.BackfillStore`,
:class:`~indexer.worker.indexes.IndexStore`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from indexer.store import ClaimedRow
from indexer.store.documents import ClaimedDocument, DocumentWrite, SourceText
from indexer.worker.backfill import BackfillStore
from indexer.worker.indexes import IndexStore
from indexer.worker.lease import LeaseStore
from indexer.worker.models import ModelStore
from indexer.worker.prune import PruneStore


class DocumentStore(BackfillStore, Protocol):
    """What the document work needs of :class:`indexer.store.Store`."""

    def apply_source_changes(self, batch: int = ...) -> int: ...

    def claim_documents(
        self, worker_id: uuid.UUID, limit: int, lease_seconds: float
    ) -> list[ClaimedDocument]: ...

    def source_texts(
        self, source_id: int, keys: Sequence[str], max_chars: int
    ) -> list[SourceText]: ...

    def cached_vectors(
        self, cache_key: str, hashes: Sequence[bytes]
    ) -> dict[bytes, np.ndarray]: ...

    def cache_vectors(
        self, cache_key: str, hashes: Sequence[bytes], vectors: Sequence[np.ndarray]
    ) -> None: ...

    def replace_documents(
        self,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        writes: Sequence[DocumentWrite],
        *,
        model: str,
        cache_key: str | None,
        token_count: int,
        claim_ms: float,
        embed_ms: float,
        model_id: int | None = None,
        in_column: bool = True,
        max_chars: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> tuple[list[int], list[int], int]: ...

    def forget_documents(
        self, worker_id: uuid.UUID, docs: Sequence[ClaimedDocument]
    ) -> list[int]: ...

    def fail_documents(
        self,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        failures: Sequence[tuple[ClaimedDocument, str]],
        *,
        max_attempts: int,
        retry_base_seconds: float,
        embed_ms: float = 0.0,
    ) -> list[int]: ...

    def extend_document_lease(
        self, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float
    ) -> list[int]: ...

    def release_documents(self, worker_id: uuid.UUID, ids: Sequence[int]) -> None: ...

    def defer_documents(self, worker_id: uuid.UUID, ids: Sequence[int], seconds: float) -> None: ...


class WorkSignal(Protocol):
    """Wakes the idle worker when rows need work (:class:`indexer.store.Listener`)."""

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class WorkStore(LeaseStore, PruneStore, DocumentStore, ModelStore, IndexStore, Protocol):
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
        model_id: int | None = None,
        in_column: bool = True,
        max_chars: int | None = None,
        detail: Mapping[str, Any] | None = None,
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
