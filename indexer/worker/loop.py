"""The daemon's loop: claim rows, embed them, write the vectors back, log the batch.

Claim design: a **lease**, not a transaction held open while the model runs.  A claim
is one short statement (``FOR UPDATE SKIP LOCKED`` + ``UPDATE ... SET state =
'claimed', claimed_by, lease_expires_at``) that commits at once; the vectors are
written later by a second statement guarded by ``claimed_by`` and ``content_version``.
Why not hold the row locks for the whole batch: an application that updates a row
being embedded would then wait for the model (hundreds of milliseconds, seconds under
load) inside its own transaction, and every daemon would pin the vacuum horizon for
that long.  With a lease the application never waits on the daemon; a killed daemon's
rows return to the queue when their lease expires (``INDEXER_LEASE_SECONDS``); a late
write from a daemon whose lease passed to another, or whose text changed meanwhile,
matches no row and is discarded.  Rows are therefore embedded exactly once per
content version.

The loop holds no SQL (that is :mod:`indexer.store.store`) and no model code (that is
:mod:`indexer.embedding.embedder`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.embedding import TextEmbedder, Tokenized
from indexer.exceptions import DatabaseUnavailable, EmbeddingError
from indexer.settings import Settings
from indexer.store import ClaimedRow, Store

logger = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 3600.0
MAX_BACKOFF_SECONDS = 10.0


class FaultInjector:
    """Test hook (INDEXER_TEST_FAIL_MARKER): any text containing the marker fails.

    It fails the whole model call, as a real model error would, so the daemon's real
    isolation code has to find the bad row.
    """

    def __init__(self, inner: TextEmbedder, marker: str) -> None:
        self.inner = inner
        self.marker = marker
        self.name = inner.name

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        return self.inner.tokenize(texts)

    def embed_tokenized(self, tokenized: Tokenized) -> np.ndarray:
        if any(self.marker in t for t in tokenized.texts):
            raise EmbeddingError(f"injected failure: text contains {self.marker!r}")
        return self.inner.embed_tokenized(tokenized)


class LeaseKeeper:
    """Extends the lease of the batch in flight every lease/3 seconds, on its own
    connection, while the model runs (ONNX Runtime releases the GIL).

    A database hiccup here is logged and retried at the next beat: the guarded write
    keeps the data right even if a lease does lapse.  Any other error stops the keeper
    and is raised again by :meth:`check` in the worker loop, so the daemon stops loudly
    rather than run without heartbeats.
    """

    def __init__(self, store: Store, worker_id: uuid.UUID, lease_seconds: float) -> None:
        self.store = Store(store.dsn, store.schema, check=False)
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hold(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._ids = list(ids)

    def drop(self) -> None:
        with self._lock:
            self._ids = []

    def check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the lease keeper stopped: {self._error}") from self._error

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.store.close()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                with self._lock:
                    ids = list(self._ids)
                if not ids:
                    continue
                try:
                    self.store.extend_lease(self.worker_id, ids, self.lease_seconds)
                except DatabaseUnavailable as exc:
                    logger.warning("could not extend the lease of %d rows: %s", len(ids), exc)
        except BaseException as exc:
            self._error = exc
            logger.error("lease keeper failed: %s", exc)


@dataclass
class BatchResult:
    batch_id: uuid.UUID
    claimed: int
    written: list[int]
    failed: list[int]
    tokens: int
    embed_ms: float
    stale: int = 0


@dataclass
class _PendingWrite:
    """A batch whose write was interrupted by a database outage: retried on reconnect."""

    batch_id: uuid.UUID
    good: list[tuple[ClaimedRow, np.ndarray]]
    bad: list[tuple[ClaimedRow, str]]
    tokens: int
    claim_ms: float
    embed_ms: float
    rows: list[ClaimedRow]


@dataclass
class _Claim:
    """Rows claimed together and not embedded yet: tokenized once, shortest first.

    Sorting a whole claim by length before cutting it into batches is what keeps the
    model's padding low: a batch then holds rows of nearly equal length.
    """

    rows: list[ClaimedRow]
    tokenized: Tokenized
    claim_ms: float

    @classmethod
    def sorted(cls, rows: list[ClaimedRow], tokenized: Tokenized, claim_ms: float) -> _Claim:
        lengths = tokenized.lengths
        order = sorted(range(len(rows)), key=lengths.__getitem__)
        return cls([rows[i] for i in order], tokenized.select(order), claim_ms)

    def take(self, count: int) -> tuple[list[ClaimedRow], Tokenized, float]:
        """The next ``count`` rows, their tokens, and the claim's time (first take only)."""
        rows, self.rows = self.rows[:count], self.rows[count:]
        taken = self.tokenized.select(range(len(rows)))
        self.tokenized = self.tokenized.select(range(len(rows), len(self.tokenized)))
        claim_ms, self.claim_ms = self.claim_ms, 0.0
        return rows, taken, claim_ms


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        embedder: TextEmbedder,
        *,
        stop_event: threading.Event | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder: TextEmbedder | FaultInjector = (
            FaultInjector(embedder, settings.test_fail_marker)
            if settings.test_fail_marker
            else embedder
        )
        self.stop_event = stop_event or threading.Event()
        self.on_batch = on_batch
        self.worker_id = uuid.uuid4()
        self._pending: _PendingWrite | None = None
        self._claim: _Claim | None = None
        self._to_release: list[int] = []
        self._keeper = LeaseKeeper(store, self.worker_id, settings.lease_seconds)
        self._down_since: float | None = None
        self._backoff = 0.5
        self._last_prune = 0.0
        self.batches = 0
        self.rows_written = 0

    @property
    def claim_size(self) -> int:
        return max(self.settings.claim_size, self.settings.batch_size)

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, *, once: bool = False) -> None:
        """Work until stopped (or, with ``once``, until nothing is left to claim).

        Stopping takes effect between batches: the batch in flight is written, the
        rest of its claim is released at once.  Raises DatabaseUnavailable when the
        database stays away longer than INDEXER_DB_DOWN_TIMEOUT.
        """
        logger.info("worker %s starting", self.worker_id)
        started = False
        self._keeper.start()
        try:
            while not self.stop_event.is_set():
                try:
                    if not started:
                        self.store.record_event(
                            "worker_started", self.worker_id, detail=self._describe()
                        )
                        started = True
                    if not self._step(once):
                        break
                    self._database_back()
                except DatabaseUnavailable as exc:
                    self._database_down(exc)
        finally:
            self._shutdown(started)

    def _step(self, once: bool) -> bool:
        """One batch; False when ``once`` and the queue is empty."""
        self._keeper.check()
        if self._pending is not None:
            self._write(self._pending)
            self._pending = None
        if self._to_release:
            self.store.release(self.worker_id, self._to_release)
            self._to_release = []
        if self._claim is None:
            self._maybe_prune()
            claim_start = time.perf_counter()
            settings = self.settings
            rows = self.store.claim(
                self.worker_id, self.claim_size, settings.lease_seconds, settings.max_chars
            )
            claim_ms = (time.perf_counter() - claim_start) * 1000
            if not rows:
                if once:
                    return False
                self._idle()
                return True
            tokenized = self.embedder.tokenize([r.content for r in rows])
            self._claim = _Claim.sorted(rows, tokenized, claim_ms)
        rows, tokenized, claim_ms = self._claim.take(self.settings.batch_size)
        rest = [r.id for r in self._claim.rows]
        if not rest:
            self._claim = None
        self.process(rows, tokenized, claim_ms, rest)
        return True

    def _idle(self) -> None:
        """Wait for a NOTIFY, or the poll interval; wake quickly when asked to stop."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.store.wait_for_work(min(remaining, 0.25)):
                return

    def process(
        self,
        rows: list[ClaimedRow],
        tokenized: Tokenized,
        claim_ms: float = 0.0,
        waiting: Sequence[int] = (),
    ) -> BatchResult:
        """Embed and write one batch of claimed rows (``waiting``: the claim's other
        rows, whose lease is kept alive meanwhile)."""
        batch_id = uuid.uuid4()
        tokens = sum(tokenized.lengths)
        start = time.perf_counter()
        self._keeper.hold([*(r.id for r in rows), *waiting])
        try:
            good, bad = self._embed_isolating(rows, tokenized)
        finally:
            self._keeper.hold(waiting)
        embed_ms = (time.perf_counter() - start) * 1000
        pending = _PendingWrite(batch_id, good, bad, tokens, claim_ms, embed_ms, rows)
        self._pending = pending
        result = self._write(pending)
        self._pending = None
        return result

    def _write(self, batch: _PendingWrite) -> BatchResult:
        written: list[int] = []
        failed: list[int] = []
        if batch.good:
            written = self.store.complete_batch(
                self.worker_id,
                batch.batch_id,
                [r for r, _ in batch.good],
                np.stack([v for _, v in batch.good]),
                model=self.embedder.name,
                token_count=batch.tokens,
                claim_ms=batch.claim_ms,
                embed_ms=batch.embed_ms,
            )
            batch.good = []  # committed: a retry after an outage must not write them again
        if batch.bad:
            failed = self.store.fail_rows(
                self.worker_id,
                batch.batch_id,
                batch.bad,
                max_attempts=self.settings.max_attempts,
                retry_base_seconds=self.settings.retry_base_seconds,
                embed_ms=batch.embed_ms,
            )
            batch.bad = []
        result = BatchResult(
            batch_id=batch.batch_id,
            claimed=len(batch.rows),
            written=written,
            failed=failed,
            tokens=batch.tokens,
            embed_ms=batch.embed_ms,
            stale=len(batch.rows) - len(written) - len(failed),
        )
        self.batches += 1
        self.rows_written += len(written)
        logger.info(
            "batch %s: %d rows embedded, %d failed, %d stale, %d tokens, embed %.0f ms",
            batch.batch_id,
            len(written),
            len(failed),
            result.stale,
            batch.tokens,
            batch.embed_ms,
            extra={
                "batch_id": str(batch.batch_id),
                "rows": len(written),
                "failed": len(failed),
                "stale": result.stale,
                "tokens": batch.tokens,
                "embed_ms": round(batch.embed_ms, 1),
            },
        )
        if self.on_batch is not None:
            self.on_batch(result)
        return result

    def _embed_isolating(
        self, rows: Sequence[ClaimedRow], tokenized: Tokenized
    ) -> tuple[list[tuple[ClaimedRow, np.ndarray]], list[tuple[ClaimedRow, str]]]:
        """Embed rows; when the model fails, split the batch to find the bad rows.

        A batch with one bad row costs about 2*log2(n) extra model calls, and the good
        rows are still embedded in this pass.
        """
        try:
            vectors = self.embedder.embed_tokenized(tokenized)
        except Exception as exc:  # any model failure is a property of some row(s)
            if len(rows) == 1:
                message = (
                    f"{type(exc).__name__}: {exc}"
                    if not isinstance(exc, EmbeddingError)
                    else str(exc)
                )
                logger.warning("row %d failed to embed: %s", rows[0].id, message)
                return [], [(rows[0], message)]
            middle = len(rows) // 2
            good_a, bad_a = self._embed_isolating(rows[:middle], tokenized.select(range(middle)))
            good_b, bad_b = self._embed_isolating(
                rows[middle:], tokenized.select(range(middle, len(rows)))
            )
            return good_a + good_b, bad_a + bad_b
        return list(zip(rows, vectors, strict=True)), []

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        pruned = self.store.prune_events(self.settings.events_retention_days * 86400)
        if pruned:
            logger.info(
                "pruned %d events older than %g days", pruned, self.settings.events_retention_days
            )

    def _database_down(self, exc: DatabaseUnavailable) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            logger.warning("database unavailable, retrying: %s", exc)
            if self._claim is not None:
                # Leases cannot be renewed while the database is away: give the rest
                # of the claim back once it returns, rather than embed rows that
                # another daemon may have claimed by then.
                self._to_release.extend(r.id for r in self._claim.rows)
                self._claim = None
                self._keeper.drop()
        elif now - self._down_since > self.settings.db_down_timeout:
            raise DatabaseUnavailable(
                f"database unavailable for {now - self._down_since:.0f} s "
                f"(INDEXER_DB_DOWN_TIMEOUT={self.settings.db_down_timeout:g}): {exc}"
            ) from exc
        self.stop_event.wait(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    def _database_back(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "database available again after %.1f s", time.monotonic() - self._down_since
            )
        self._down_since = None
        self._backoff = 0.5

    def _shutdown(self, started: bool) -> None:
        self._keeper.stop()
        try:
            # Rows claimed and not written (the rest of a claim when asked to stop, a
            # write cut off by an outage) go back now, or, if the database is still
            # away, when their lease expires.
            unwritten = list(self._to_release)
            if self._claim is not None:
                unwritten.extend(r.id for r in self._claim.rows)
            if self._pending is not None:
                unwritten.extend(r.id for r in self._pending.rows)
            if unwritten:
                self.store.release(self.worker_id, unwritten)
            if started:
                self.store.record_event(
                    "worker_stopped",
                    self.worker_id,
                    row_count=self.rows_written,
                    detail={"batches": self.batches},
                )
        except DatabaseUnavailable as exc:
            logger.warning("could not record the stop (database unavailable): %s", exc)
        logger.info(
            "worker %s stopped after %d batches, %d rows",
            self.worker_id,
            self.batches,
            self.rows_written,
        )

    def _describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "model": self.embedder.name,
            "batch_size": s.batch_size,
            "claim_size": self.claim_size,
            "token_budget": s.token_budget,
            "lease_seconds": s.lease_seconds,
        }
