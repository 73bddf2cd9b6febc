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

The loop holds no SQL (that is :mod:`indexer.store`) and no model code (that is
:mod:`indexer.embedding`); it needs of them only :class:`~indexer.worker.stores.WorkStore` and
:class:`~indexer.embedding.TextEmbedder`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from indexer.embedding import TextEmbedder, Tokenized
from indexer.embedding.background import Background
from indexer.exceptions import DatabaseUnavailable, ProviderAway
from indexer.settings import Settings
from indexer.store import ClaimedRow
from indexer.worker.claim import BatchResult, Claim, PendingWrite
from indexer.worker.documents import DocumentWork
from indexer.worker.embed import embed_groups
from indexer.worker.fill import ModelFill
from indexer.worker.indexes import IndexBuilder
from indexer.worker.lease import LeaseKeeper
from indexer.worker.models import Loader, ModelSet, ModelStore
from indexer.worker.outage import Outage, ProviderOutage
from indexer.worker.prune import Pruner
from indexer.worker.stores import WorkStore

logger = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: WorkStore,
        embedder: TextEmbedder,
        *,
        stop_event: threading.Event | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
        load_model: Loader | None = None,
        background: Background | None = None,
        fill_store: ModelStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        #: The registered models (``load_model`` gives the embedder of each; without
        #: it, ``embedder`` runs the active model and no other model is kept current).
        self.models = ModelSet(store, embedder, load_model)
        self.embedder = embedder
        self.listener = store.listener()
        self.stop_event = stop_event or threading.Event()
        self.on_batch = on_batch
        self.worker_id = uuid.uuid4()
        self._pending: PendingWrite | None = None
        self._claim: Claim | None = None
        self._to_release: list[int] = []
        self._keeper = LeaseKeeper(store, self.worker_id, settings.lease_seconds)
        self.pruner = Pruner(store, settings)
        self.indexes = IndexBuilder(store, memory=settings.index_build_memory)
        #: The vector cache's key for the active model; None when the cache is off.
        self.cache_key = embedder.cache_key if settings.cache else None
        self._outage = Outage(settings.db_down_timeout)
        self._away = ProviderOutage()
        self.batches = 0
        self.rows_written = 0
        self.passages_written = 0
        self.documents = DocumentWork(
            settings,
            store,
            self.models.active,
            self.worker_id,
            cache=settings.cache,
            stop_event=self.stop_event,
            report=self._count_documents,
        )
        #: The fill's statements run on ``fill_store`` when given (a daemon's: a pool
        #: whose backends are niced, as the fill's model calls are).
        self.fill = ModelFill(
            settings,
            store if fill_store is None else fill_store,
            self.models,
            self.worker_id,
            cache=settings.cache,
            yield_to=self._other_work_waiting,
            background=background,
        )
        #: Whether the next idle moment tries documents before rows (they alternate, so
        #: neither queue starves the other).
        self._documents_turn = True

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
        logger.info(
            "worker %s starting; documents are cut into passages of %d tokens, %d overlapping"
            " (other settings are refused while passages exist: `indexer sources recut` cuts"
            " every document again)",
            self.worker_id,
            self.settings.chunk_tokens,
            self.settings.chunk_overlap,
        )
        started = False
        self._keeper.start()
        self.documents.start()
        self.pruner.start()
        self.indexes.start()
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
                    self._outage.over()
                except DatabaseUnavailable as exc:
                    self._database_down(exc)
                except ProviderAway as exc:
                    self._provider_away(exc)
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
            self._follow_active_model()
            if not self.models.runs_active:
                return self._help_other_models(once)
            if self.fill.active_step():
                return True
            documents_first, self._documents_turn = self._documents_turn, not self._documents_turn
            if documents_first and self.documents.step():
                return True
            self._claim = self._next_claim()
            if self._claim is None:
                if not documents_first and self.documents.step():
                    return True
                if self.fill.step():
                    return True
                if once:
                    return self._finish_once()
                self._idle()
                self._follow_active_model(force=True)
                return True
        claim = self._claim
        if not claim.fresh and not self._still_held(claim):
            self._claim = None
            return True
        if claim.reused:
            reused, claim_ms = claim.take_reused()
            if not claim.ids:
                self._claim = None
            self.write_reused(reused, claim_ms, claim.ids)
            return True
        groups, tokenized, claim_ms = claim.take(self.settings.batch_size)
        rest = claim.ids
        if not rest:
            self._claim = None
        self.process(groups, tokenized, claim_ms, rest)
        return True

    def _finish_once(self) -> bool:
        """``run --once`` found nothing left to claim: build the model indexes now due
        (a model it filled can be activated next), and stop."""
        self.indexes.build_due()
        return False

    def _help_other_models(self, once: bool) -> bool:
        """A daemon that cannot run the active model: the other models' work only."""
        if self.fill.step():
            return True
        if once:
            return self._finish_once()
        self._idle()
        self._follow_active_model(force=True)
        return True

    def _follow_active_model(self, *, force: bool = False) -> None:
        """Between claims: embed new text with the model activated since, if any."""
        if self.models.refresh(force=force):
            active = self.models.active
            self.embedder = active.embedder
            self.cache_key = active.embedder.cache_key if self.settings.cache else None
            self.documents.use(active)

    def _still_held(self, claim: Claim) -> bool:
        """Renew the leases of the claim's rows before its next batch, and drop those
        another daemon took over meanwhile (a lease that ran out while this process was
        stopped or starved): embedding them would be wasted work.  False when none is
        left."""
        ids = claim.ids
        held = set(self.store.extend_lease(self.worker_id, ids, self.settings.lease_seconds))
        lost = set(ids) - held
        if lost:
            logger.warning(
                "%d rows of this claim were taken over by another daemon (their lease ran "
                "out); skipping them",
                len(lost),
            )
            claim.drop(lost)
        return bool(claim.ids)

    def _next_claim(self) -> Claim | None:
        """Claim rows (with their cached vectors), tokenize the others' texts once and
        sort them; None when nothing is waiting."""
        start = time.perf_counter()
        s = self.settings
        rows = self.store.claim(
            self.worker_id, self.claim_size, s.lease_seconds, s.max_chars, self.cache_key
        )
        claim_ms = (time.perf_counter() - start) * 1000
        if not rows:
            return None
        return Claim.of(rows, self.embedder.tokenize, claim_ms)

    def _other_work_waiting(self) -> bool:
        """Asked by the fill between two slices of a claim: whether to stop it and turn
        to other work.  Yes on a stop request, or when new text was notified (a row or
        a document queued) since the listener last reported: a look at the listener's
        connection that does not block and sends no statement.  The notification is
        consumed; the loop's next step claims rows and documents before any fill.  A
        daemon that cannot run the active model takes no rows: nothing to yield to."""
        if self.stop_event.is_set():
            return True
        return self.models.runs_active and self.listener.wait(0.0)

    def _idle(self) -> None:
        """Wait for a NOTIFY, or the poll interval; wake quickly when asked to stop."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.listener.wait(min(remaining, 0.25)):
                return

    def write_reused(
        self, rows: list[ClaimedRow], claim_ms: float, waiting: Sequence[int] = ()
    ) -> BatchResult:
        """Write rows whose vector came from the cache: a batch with no model call."""
        self._keeper.hold(waiting)
        good = [(r, r.cached) for r in rows if r.cached is not None]
        pending = PendingWrite(
            uuid.uuid4(), good, [], 0, claim_ms, 0.0, rows, reused={r.id for r in rows}
        )
        return self._write_now(pending)

    def process(
        self,
        groups: list[list[ClaimedRow]],
        tokenized: Tokenized,
        claim_ms: float = 0.0,
        waiting: Sequence[int] = (),
    ) -> BatchResult:
        """Embed one batch of texts and write it: each group's rows get its text's
        vector (``waiting``: the claim's other rows, whose lease is kept alive)."""
        rows = [r for g in groups for r in g]
        batch_id = uuid.uuid4()
        tokens = sum(tokenized.lengths)
        start = time.perf_counter()
        self._keeper.hold([*(r.id for r in rows), *waiting])
        try:
            embedded = embed_groups(self.embedder, groups, tokenized)
        except ProviderAway:
            self._to_release.extend(r.id for r in rows)
            raise
        finally:
            self._keeper.hold(waiting)
        embed_ms = (time.perf_counter() - start) * 1000
        good = [(r, vector) for g, vector in embedded.good for r in g]
        bad = [(r, error) for g, error in embedded.bad for r in g]
        copies = {r.id for g, _ in embedded.good for r in g[1:]}  # equal text: one model input
        pending = PendingWrite(
            batch_id, good, bad, tokens, claim_ms, embed_ms, rows, copies, embedded.detail
        )
        return self._write_now(pending)

    def _write_now(self, pending: PendingWrite) -> BatchResult:
        self._pending = pending
        result = self._write(pending)
        self._pending = None
        return result

    def _write(self, batch: PendingWrite) -> BatchResult:
        written: list[int] = []
        failed: list[int] = []
        reused = 0
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
                reused=[r.id in batch.reused for r, _ in batch.good],
                cache_key=self.cache_key,
                model_id=self.models.active.id,
                in_column=self.models.active.in_column,
                max_chars=self.settings.max_chars,
                detail=batch.detail,
            )
            reused = len(batch.reused.intersection(written))
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
            reused=reused,
            model=self.embedder.name,
            provider=batch.detail.get("provider"),
        )
        self._report(result)
        return result

    def _count(self, result: BatchResult) -> None:
        self._away.over()  # a batch of rows or documents written: the model answered
        self.batches += 1
        self.rows_written += len(result.written)  # vectors written: rows and passages
        if result.documents:
            self.passages_written += len(result.written)
        if self.on_batch is not None:
            self.on_batch(result)

    def _count_documents(self, result: BatchResult) -> None:
        self._count(dataclasses.replace(result, documents=True))

    def _report(self, result: BatchResult) -> None:
        logger.info(
            "batch %s: %d rows embedded (%d reused), %d failed, %d stale, %d tokens, embed %.0f ms",
            result.batch_id,
            len(result.written),
            result.reused,
            len(result.failed),
            result.stale,
            result.tokens,
            result.embed_ms,
            extra={
                "batch_id": str(result.batch_id),
                "rows": len(result.written),
                "reused": result.reused,
                "failed": len(result.failed),
                "stale": result.stale,
                "tokens": result.tokens,
                "embed_ms": round(result.embed_ms, 1),
            },
        )
        self._count(result)

    def _database_down(self, exc: DatabaseUnavailable) -> None:
        if self._outage.begins(exc):
            if self._claim is not None:
                # Leases cannot be renewed while the database is away: give the rest
                # of the claim back once it returns, rather than embed rows that
                # another daemon may have claimed by then.
                self._to_release.extend(self._claim.ids)
                self._claim = None
                self._keeper.drop()
            self.documents.drop()
        self._outage.wait(self.stop_event)

    def _provider_away(self, exc: ProviderAway) -> None:
        """The active model's server is busy or down: give the work back (no attempt
        is counted against any row), say so once per episode, and wait."""
        if self._claim is not None:
            self._to_release.extend(self._claim.ids)
            self._claim = None
            self._keeper.drop()
        if self._away.begins(exc, self.embedder.name):
            self.store.record_event("provider_away", self.worker_id, detail=self._away.detail())
        self._away.wait(self.stop_event)

    def _shutdown(self, started: bool) -> None:
        self._keeper.stop()
        self.pruner.stop()
        self.indexes.stop()
        try:
            self.fill.close()
            self.documents.stop()
            # Rows claimed and not written (the rest of a claim when asked to stop, a
            # write cut off by an outage) go back now, or, if the database is still
            # away, when their lease expires.
            unwritten = list(self._to_release)
            if self._claim is not None:
                unwritten.extend(self._claim.ids)
            if self._pending is not None:
                unwritten.extend(r.id for r in self._pending.rows)
            if unwritten:
                self.store.release(self.worker_id, unwritten)
            if started:
                self.store.record_event(
                    "worker_stopped",
                    self.worker_id,
                    row_count=self.rows_written,
                    detail={"batches": self.batches, "passages": self.passages_written},
                )
        except DatabaseUnavailable as exc:
            logger.warning("could not record the stop (database unavailable): %s", exc)
        finally:
            self.listener.close()
        logger.info(
            "worker %s stopped after %d batches, %d rows, %d passages",
            self.worker_id,
            self.batches,
            self.rows_written - self.passages_written,
            self.passages_written,
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
            "chunk_tokens": s.chunk_tokens,
            "chunk_overlap": s.chunk_overlap,
        }
