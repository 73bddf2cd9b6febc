"""Test hooks and fakes: never read from Settings, never in ``--help``.

- :class:`FaultInjector` wraps an embedder so that texts holding a marker fail, the
  way a real model error would (the whole model call fails), so the daemon's real
  isolation code has to find the bad row.
- :class:`FakeStore` and :class:`FakeEmbedder` let unit tests drive the real
  :class:`~indexer.worker.Worker` loop with no database and no model.
- :class:`CountingEmbedder` (re-exported from :mod:`indexer.embedding.wrappers`, where
  the bench finds it too) records every model input.
- ``python -m indexer.testing ARGS...`` (:mod:`indexer.testing.__main__`) runs the real
  ``indexer`` command with a :class:`FaultInjector` around its embedder when
  ``INDEXER_TEST_FAIL_MARKER`` is set (acceptance tests of poison rows in a subprocess).
  That entry point, not this module, imports the CLI: the CLI loads the bench, which
  must never lead back here.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.embedding import TextEmbedder, Tokenized
from indexer.embedding.wrappers import CountingEmbedder, EmbedderWrapper
from indexer.exceptions import DatabaseUnavailable, EmbeddingError
from indexer.settings import Settings
from indexer.store import ClaimedRow

FAIL_MARKER_ENV = "INDEXER_TEST_FAIL_MARKER"

__all__ = [
    "FAIL_MARKER_ENV",
    "CountingEmbedder",
    "EmbedderWrapper",
    "FakeEmbedder",
    "FakeStore",
    "FaultInjector",
    "fault_injecting",
]


class FaultInjector(EmbedderWrapper):
    """An embedder whose model calls fail when any of their texts contains ``marker``."""

    def __init__(self, inner: TextEmbedder, marker: str) -> None:
        super().__init__(inner)
        self.marker = marker

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        if any(self.marker in t for t in tokenized.texts):
            raise EmbeddingError(f"injected failure: text contains {self.marker!r}")
        return self.inner.embed_tokenized(tokenized)


class FakeEmbedder:
    """Deterministic unit vectors from a hash of each text; one "token" per word.

    Fast and model-free, for tests of the worker loop; ``calls`` records the texts of
    every model call.
    """

    name = "fake"
    dim = 8
    cache_key = "fake:1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def tokenize(self, texts: Sequence[str], *, query: bool = False) -> Tokenized:
        return Tokenized(tuple(texts), tuple(tuple(range(len(t.split()) + 2)) for t in texts))

    def token_offsets(self, text: str) -> Sequence[tuple[int, int]]:
        return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        self.calls.append(tokenized.texts)
        vectors = np.empty((len(tokenized), self.dim), np.float32)
        for row, text in enumerate(tokenized.texts):
            vectors[row] = self.vector(text)
        return vectors

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.embed_tokenized(self.tokenize(texts))

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.embed_tokenized(self.tokenize(texts, query=True))

    @classmethod
    def vector(cls, text: str) -> npt.NDArray[np.float32]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(cls.dim).astype(np.float32)
        out: npt.NDArray[np.float32] = v / np.linalg.norm(v)
        return out


@dataclass
class FakeRow:
    content: str
    version: int = 1
    state: str = "pending"
    claimed_by: uuid.UUID | None = None
    attempts: int = 0
    embedding: npt.NDArray[np.float32] | None = None
    last_error: str | None = None
    backing_off: bool = False  # failed, waiting for its retry time (see retry_now)


class _NoSignal:
    def wait(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        pass


@dataclass
class FakeStore:
    """The worker's side of :class:`indexer.store.Store`, in memory, with the same
    guards (a write lands only for the claimer and the claimed content version).

    ``down`` makes every call raise DatabaseUnavailable (an outage); ``before`` is
    called with the method's name before each call, so a test can act mid-loop.
    """

    rows: dict[int, FakeRow] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    before: Callable[[str], None] | None = None
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The vector cache: (cache key, sha256 of the text read) -> vector.
    cache: dict[tuple[str, bytes], npt.NDArray[np.float32]] = field(default_factory=dict)

    def add(self, *texts: str) -> list[int]:
        ids = []
        for text in texts:
            ids.append(len(self.rows) + 1)
            self.rows[ids[-1]] = FakeRow(text)
        return ids

    def retry_now(self) -> None:
        """Every row backing off after a failure may be claimed again."""
        for row in self.rows.values():
            row.backing_off = False

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.before is not None:
            self.before(name)
        if self.down:
            raise DatabaseUnavailable(f"fake outage during {name}")

    def listener(self) -> _NoSignal:
        return _NoSignal()

    def claim(
        self,
        worker_id: uuid.UUID,
        limit: int,
        lease_seconds: float,
        max_chars: int,
        cache_key: str | None = None,
    ) -> list[ClaimedRow]:
        self._enter("claim")
        with self.lock:
            free = [
                i
                for i, r in sorted(self.rows.items())
                if r.state == "pending" and not r.backing_off
            ][:limit]
            claimed = []
            for i in free:
                self.rows[i].state, self.rows[i].claimed_by = "claimed", worker_id
                text = self.rows[i].content[:max_chars]
                digest = hashlib.sha256(text.encode()).digest()
                cached = None if cache_key is None else self.cache.get((cache_key, digest))
                claimed.append(ClaimedRow(i, self.rows[i].version, text, 0, digest, cached))
            return claimed

    def _mine(self, worker_id: uuid.UUID, row: ClaimedRow) -> FakeRow | None:
        current = self.rows.get(row.id)
        if current is None or current.state != "claimed" or current.claimed_by != worker_id:
            return None
        return current if current.version == row.content_version else None

    def complete_batch(
        self,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        rows: Sequence[ClaimedRow],
        embeddings: np.ndarray,
        *,
        reused: Sequence[bool] | None = None,
        cache_key: str | None = None,
        model_id: int | None = None,
        in_column: bool = True,
        max_chars: int | None = None,
        **figures: Any,
    ) -> list[int]:
        self._enter("complete_batch")
        written = []
        flags = list(reused) if reused is not None else [False] * len(rows)
        with self.lock:
            for row, vector, was_reused in zip(rows, embeddings, flags, strict=True):
                current = self._mine(worker_id, row)
                if current is not None:
                    current.state, current.claimed_by, current.embedding = "embedded", None, vector
                    written.append(row.id)
                if cache_key is not None and not was_reused and row.hash is not None:
                    self.cache.setdefault((cache_key, row.hash), vector)
            count = sum(f for r, f in zip(rows, flags, strict=True) if r.id in written)
            self.events.append(
                {"kind": "batch_completed", "ids": written, "reused": count, **figures}
            )
        return sorted(written)

    def fail_rows(
        self,
        worker_id: uuid.UUID,
        batch_id: uuid.UUID,
        failures: Sequence[tuple[ClaimedRow, str]],
        *,
        max_attempts: int,
        **figures: Any,
    ) -> list[int]:
        self._enter("fail_rows")
        failed = []
        with self.lock:
            for row, error in failures:
                current = self._mine(worker_id, row)
                if current is not None:
                    current.attempts += 1
                    current.state = "failed" if current.attempts >= max_attempts else "pending"
                    current.claimed_by, current.last_error = None, error
                    current.backing_off = current.state == "pending"
                    failed.append(row.id)
            self.events.append({"kind": "batch_failed", "ids": failed})
        return sorted(failed)

    def extend_lease(
        self, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float
    ) -> list[int]:
        self._enter("extend_lease")
        with self.lock:
            return sorted(
                i
                for i in ids
                if (row := self.rows.get(i)) is not None
                and row.state == "claimed"
                and row.claimed_by == worker_id
            )

    def release(self, worker_id: uuid.UUID, ids: Sequence[int]) -> None:
        self._enter("release")
        with self.lock:
            for i in ids:
                row = self.rows.get(i)
                if row is not None and row.state == "claimed" and row.claimed_by == worker_id:
                    row.state, row.claimed_by = "pending", None

    def record_event(self, kind: str, worker_id: uuid.UUID, **fields: Any) -> None:
        self._enter("record_event")
        self.events.append({"kind": kind, **fields})

    def prune_events(self, older_than_seconds: float) -> int:
        self._enter("prune_events")
        return 0

    def prune_cache(self, max_age_seconds: float, max_entries: int, batch: int = 5000) -> int:
        """Drops the oldest entries beyond ``max_entries`` (no ages kept here)."""
        self._enter("prune_cache")
        with self.lock:
            victims = list(self.cache)[: max(0, min(batch, len(self.cache) - max_entries))]
            for key in victims:
                del self.cache[key]
        return len(victims)

    # The document queue: a FakeStore holds no source and no document, so the worker's
    # document work always finds nothing; anything further is a test's mistake.
    def apply_source_changes(self, batch: int = 10_000) -> int:
        self._enter("apply_source_changes")
        return 0

    def claim_documents(self, worker_id: uuid.UUID, limit: int, lease_seconds: float) -> list[Any]:
        self._enter("claim_documents")
        return []

    def backfills_due(self) -> list[tuple[int, str]]:
        self._enter("backfills_due")
        return []

    def extend_document_lease(
        self, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float
    ) -> list[int]:
        return []

    def release_documents(self, worker_id: uuid.UUID, ids: Sequence[int]) -> None:
        return None

    def defer_documents(self, worker_id: uuid.UUID, ids: Sequence[int], seconds: float) -> None:
        return None

    # The model registry: a FakeStore registers none, so the worker's one embedder is
    # the only model, and no other model has work.
    def models(self) -> list[Any]:
        return []

    def fill_model(self, model_id: int, batch: int = 1000) -> int:
        return 0

    def models_to_index(self, slack: int = 1000) -> list[Any]:
        return []

    def index_build(self, work: Any) -> Any:
        raise AssertionError("no model is registered in a FakeStore")

    def index_lock_holder(self, model_id: int) -> None:
        return None

    def claim_model_work(self, model_id: int, *args: Any) -> list[ClaimedRow]:
        return []

    def _no_documents(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("FakeStore holds no documents")

    source_texts = cached_vectors = cache_vectors = _no_documents
    replace_documents = fail_documents = forget_documents = backfill_source = _no_documents
    finish_model_work = fail_model_work = release_model_work = _no_documents


def fault_injecting(load: Callable[[Settings], TextEmbedder]) -> Callable[[Settings], TextEmbedder]:
    """``load``, wrapped in a FaultInjector when INDEXER_TEST_FAIL_MARKER is set."""
    marker = os.environ.get(FAIL_MARKER_ENV)
    if not marker:
        return load
    return lambda settings: FaultInjector(load(settings), marker)
