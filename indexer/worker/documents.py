"""The daemon's document work: back-fill sources, claim documents, chunk, embed, replace.

A **document** is a row of a source table (or of the built-in ``documents`` table).
The triggers of migration 0005 queue a document whenever it changes; the daemon
claims a few (a lease, as for rows), reads their current text from the source table,
cuts it into token windows (:func:`indexer.chunking.chunk_text`), takes the vectors of
chunks whose text was embedded before from the vector cache, embeds the others in
batches, and replaces each document's chunk set in one guarded statement once all of
its chunks have a vector.

Why embed first and swap after, instead of writing pending chunk rows for the row
queue: a reader must see a document's old chunk set or its new one, never a mix or a
half-embedded set, and an edited paragraph must not cost its neighbours' vectors.
Chunks whose text did not change hit the cache, so a re-chunked document costs model
calls only for the windows its edit touched.

Between model batches the leases are renewed and documents no longer held (edited
again, deleted, or taken over) are dropped, so a document edited mid-embedding stops
costing model time at once; on a stop request the vectors already computed go to the
cache and the documents go back to the queue.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any

import numpy as np

from indexer.embedding.remote import ProviderError, RemoteEmbedder
from indexer.exceptions import EmbeddingError, SourceBusy, SourceError
from indexer.settings import Settings
from indexer.store.documents import ChunkWrite, ClaimedDocument, DocumentWrite, SourceText
from indexer.worker.backfill import Backfill
from indexer.worker.claim import BatchResult
from indexer.worker.embed import provider_detail
from indexer.worker.lease import LeaseKeeper
from indexer.worker.models import LoadedModel
from indexer.worker.plan import Round, misses, plan
from indexer.worker.stores import DocumentStore

logger = logging.getLogger(__name__)

#: How long the documents of a source whose table another transaction has locked wait
#: before they are tried again (reading gives up after 200 ms; nothing is counted).
LOCKED_DEFER = 5.0


class _DocumentLeases:
    """The lease keeper's view of the document queue (it renews ids)."""

    def __init__(self, store: DocumentStore) -> None:
        self.store = store

    def extend_lease(
        self, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float
    ) -> list[int]:
        return self.store.extend_document_lease(worker_id, ids, lease_seconds)


class DocumentWork:
    """Back-fills sources and indexes documents for one :class:`~indexer.worker.Worker`."""

    def __init__(
        self,
        settings: Settings,
        store: DocumentStore,
        model: LoadedModel,
        worker_id: uuid.UUID,
        *,
        cache: bool,
        stop_event: threading.Event,
        report: Callable[[BatchResult], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.use(model)
        self.worker_id = worker_id
        self.stop_event = stop_event
        self.report = report
        self.keeper = LeaseKeeper(_DocumentLeases(store), worker_id, settings.lease_seconds)
        #: Documents claimed and neither written, failed nor released (an outage or a
        #: stop cut their round short): released first thing next time.
        self.held: list[int] = []
        self.backfill = Backfill(store, settings.backfill_batch)
        self.documents_written = 0

    def use(self, model: LoadedModel) -> None:
        """Index documents with ``model`` from the next round on (the active model)."""
        self.model = model
        self.embedder = model.embedder
        #: The vector cache's key for the embedder; None when the cache is off.
        self.cache_key = model.embedder.cache_key if self.cache else None

    def start(self) -> None:
        self.keeper.start()

    def stop(self) -> None:
        """Stop the lease keeper and give back what is held (the worker's shutdown)."""
        self.keeper.stop()
        if self.held:
            self.store.release_documents(self.worker_id, self.held)
            self.held = []

    def drop(self) -> None:
        """The database went away: stop renewing leases; release once it is back."""
        self.keeper.drop()

    def step(self) -> bool:
        """Apply the sources' changes, back-fill one key range of each source that needs
        it, then claim and index documents; False when there was nothing to do."""
        self.keeper.check()
        if self.held:
            self.store.release_documents(self.worker_id, self.held)
            self.held = []
        applied = self.store.apply_source_changes()
        queued = self.backfill.step()
        start = time.perf_counter()
        s = self.settings
        docs = self.store.claim_documents(self.worker_id, s.document_claim_size, s.lease_seconds)
        if not docs:
            return queued > 0 or applied > 0
        self.held = [d.id for d in docs]
        self.keeper.hold(self.held)
        try:
            self._index(docs, (time.perf_counter() - start) * 1000)
        finally:
            self.keeper.hold(self.held)
        return True

    # -- indexing --------------------------------------------------------------------

    def _index(self, docs: list[ClaimedDocument], claim_ms: float) -> None:
        failures: list[tuple[ClaimedDocument, str]] = []
        texts: dict[int, SourceText | None] = {}
        for source_id, group in groupby(
            sorted(docs, key=lambda d: d.source_id), key=lambda d: d.source_id
        ):
            members = list(group)
            try:
                rows = self.store.source_texts(
                    source_id, [d.key for d in members], self.settings.document_max_chars + 1
                )
            except SourceBusy as exc:
                # Another transaction holds the table (a long ALTER, a LOCK): this source's
                # documents wait, the others go on, and no attempt is counted.
                logger.info("%s; its %d document(s) wait", exc, len(members))
                self.store.defer_documents(self.worker_id, [d.id for d in members], LOCKED_DEFER)
                deferred = {d.id for d in members}
                self.held = [i for i in self.held if i not in deferred]
                continue
            except SourceError as exc:
                failures.extend((d, str(exc)) for d in members)
                continue
            by_key = {r.key: r for r in rows}
            texts.update((d.id, by_key.get(d.key)) for d in members)
        if failures:
            self._fail(failures, 0.0)
        gone = [d for d in docs if d.id in texts and texts[d.id] is None]
        if gone:
            # Normally a deleted row's document is deleted with it, by the trigger; one
            # still queued was back-filled in a race with the delete.
            self.store.forget_documents(self.worker_id, gone)
            self.held = [i for i in self.held if i not in {d.id for d in gone}]
        planned = []
        unplannable: list[tuple[ClaimedDocument, str]] = []
        for doc in docs:
            source = texts.get(doc.id)
            if source is None:
                continue
            try:
                planned.append(plan(doc, source, self.settings, self.embedder))
            except Exception as exc:  # a property of this document: it must not stop the rest
                unplannable.append((doc, f"could not be chunked: {type(exc).__name__}: {exc}"))
        if unplannable:
            self._fail(unplannable, 0.0)
        hashes = list({h for p in planned for *_, h in p.chunks})
        cached = self.store.cached_vectors(self.cache_key, hashes) if self.cache_key else {}
        run = Round(planned, dict(cached), set(cached), claim_ms=claim_ms)
        self._write_ready(run)
        todo = misses(run)
        first = True
        while todo and run.planned and not self.stop_event.is_set():
            if not first:
                if not self._still_held(run):
                    break
                wanted = {h for p in run.planned for *_, h in p.chunks}
                todo = [h for h in todo if h in wanted]
            first = False
            batch, todo = todo[: self.settings.batch_size], todo[self.settings.batch_size :]
            self._embed(run, batch)
            self._write_ready(run)
        # Vectors computed for documents not written (a stop request, documents edited
        # or taken over meanwhile) go to the cache: their next version wants most of them.
        self._keep_fresh(run)
        if run.planned:
            left = {p.document.id for p in run.planned}
            self.store.release_documents(self.worker_id, sorted(left))
            self.held = [i for i in self.held if i not in left]

    def _embed(self, run: Round, hashes: list[bytes]) -> None:
        text_of = {h: t for p in run.planned for *_, t, h in p.chunks}
        texts = [text_of[h] for h in hashes]
        start = time.perf_counter()
        if isinstance(self.embedder, RemoteEmbedder):
            vectors = self._embed_remote(self.embedder, run, hashes, texts)
        else:
            vectors = self._embed_local(run, hashes, texts)
        run.embed_ms += (time.perf_counter() - start) * 1000
        for digest, vector in zip(hashes, vectors, strict=True):
            if vector is not None:
                run.vectors[digest] = vector
                run.fresh.add(digest)
                run.tokens += max((p.tokens.get(digest, 0) for p in run.planned), default=0)

    def _embed_remote(
        self, embedder: RemoteEmbedder, run: Round, hashes: list[bytes], texts: list[str]
    ) -> list[np.ndarray | None]:
        """A remote model names the texts its server refused; a bad answer fails them
        all (nothing of it is written); the server's usage is added up for the write."""
        try:
            batch = embedder.embed_partial(embedder.tokenize(texts))
        except ProviderError as exc:
            run.bad.update((h, str(exc)) for h in hashes)
            return [None] * len(texts)
        run.bad.update((hashes[i], message) for i, message in batch.errors.items())
        run.usage = batch.usage if run.usage is None else run.usage + batch.usage
        return [None if i in batch.errors else v for i, v in enumerate(batch.vectors)]

    def _embed_local(
        self, run: Round, hashes: list[bytes], texts: list[str]
    ) -> list[np.ndarray | None]:
        try:
            vectors: list[np.ndarray | None] = list(self.embedder.embed(texts))
        except Exception:  # a model failure is a property of some text: find it
            vectors = []
            for digest, text in zip(hashes, texts, strict=True):
                try:
                    vectors.append(self.embedder.embed([text])[0])
                except Exception as exc:
                    message = (
                        str(exc)
                        if isinstance(exc, EmbeddingError)
                        else (f"{type(exc).__name__}: {exc}")
                    )
                    run.bad[digest] = message
                    vectors.append(None)
        return vectors

    def _still_held(self, run: Round) -> bool:
        ids = [p.document.id for p in run.planned]
        held = set(
            self.store.extend_document_lease(self.worker_id, ids, self.settings.lease_seconds)
        )
        lost = [p for p in run.planned if p.document.id not in held]
        if lost:
            logger.info(
                "%d documents changed or were taken over while their chunks were embedded; "
                "dropping them",
                len(lost),
            )
            run.planned = [p for p in run.planned if p.document.id in held]
            gone = {p.document.id for p in lost}
            self.held = [i for i in self.held if i not in gone]
        return bool(run.planned)

    def _write_ready(self, run: Round) -> None:
        """Write every document whose chunks all have a vector; fail those with a chunk
        the model could not embed."""
        ready = [p for p in run.planned if all(h in run.vectors for *_, h in p.chunks)]
        broken = [
            (p.document, f"a chunk failed to embed: {errors[0]}")
            for p in run.planned
            if (errors := [run.bad[h] for *_, h in p.chunks if h in run.bad])
        ]
        if broken:
            self._fail(broken, run.embed_ms)
            failed = {d.id for d, _ in broken}
            run.planned = [p for p in run.planned if p.document.id not in failed]
        if not ready:
            return
        writes = []
        for p in ready:
            chunks = []
            for position, begin, end, text, digest in p.chunks:
                was_reused = digest not in run.fresh
                run.fresh.discard(digest)  # the first chunk carrying it caches it
                chunks.append(
                    ChunkWrite(position, begin, end, text, digest, run.vectors[digest], was_reused)
                )
            writes.append(DocumentWrite(p.document, p.metadata, chunks, p.truncated))
        batch_id = uuid.uuid4()
        written, chunk_ids, reused = self.store.replace_documents(
            self.worker_id,
            batch_id,
            writes,
            model=self.embedder.name,
            cache_key=self.cache_key,
            token_count=run.tokens,
            claim_ms=run.claim_ms,
            embed_ms=run.embed_ms,
            model_id=self.model.id,
            in_column=self.model.in_column,
            max_chars=self.settings.max_chars,
            detail=self._provider(run, writes),
        )
        done = {p.document.id for p in ready}
        run.planned = [p for p in run.planned if p.document.id not in done]
        self.held = [i for i in self.held if i not in done]
        stale = len(ready) - len(written)
        self._report(batch_id, writes, written, chunk_ids, reused, run, stale)
        run.claim_ms = run.embed_ms = 0.0
        run.tokens = 0
        run.usage = None

    def _provider(self, run: Round, writes: Sequence[DocumentWrite]) -> dict[str, Any]:
        """A remote model's usage since the last write, for the batch's event, with each
        source's share (``sources``: by the characters of the passages embedded, not
        reused), from which ``indexer status`` tells each source's tokens and cost."""
        if run.usage is None or not isinstance(self.embedder, RemoteEmbedder):
            return {}
        detail = provider_detail(self.embedder, run.usage)
        chars: dict[str, int] = {}
        for w in writes:
            key = str(w.document.source_id)
            chars[key] = chars.get(key, 0) + sum(len(c.text) for c in w.chunks if not c.reused)
        total = sum(chars.values())
        if total:
            detail["provider"]["sources"] = {k: round(v / total, 6) for k, v in chars.items()}
        return detail

    def _keep_fresh(self, run: Round) -> None:
        if self.cache_key and run.fresh:
            fresh = sorted(run.fresh)
            self.store.cache_vectors(self.cache_key, fresh, [run.vectors[h] for h in fresh])
            run.fresh.clear()

    def _fail(self, failures: list[tuple[ClaimedDocument, str]], embed_ms: float) -> None:
        for doc, error in failures:
            logger.warning("document %s of source %s failed: %s", doc.key, doc.source_id, error)
        self.store.fail_documents(
            self.worker_id,
            uuid.uuid4(),
            failures,
            max_attempts=self.settings.max_attempts,
            retry_base_seconds=self.settings.retry_base_seconds,
            embed_ms=embed_ms,
        )
        gone = {d.id for d, _ in failures}
        self.held = [i for i in self.held if i not in gone]

    def _report(
        self,
        batch_id: uuid.UUID,
        writes: list[DocumentWrite],
        written: list[int],
        chunk_ids: list[int],
        reused: int,
        run: Round,
        stale: int,
    ) -> None:
        self.documents_written += len(written)
        logger.info(
            "batch %s: %d documents indexed (%d chunks, %d reused), %d stale, %d tokens, "
            "embed %.0f ms",
            batch_id,
            len(written),
            len(chunk_ids),
            reused,
            stale,
            run.tokens,
            run.embed_ms,
            extra={
                "batch_id": str(batch_id),
                "documents": len(written),
                "rows": len(chunk_ids),
                "reused": reused,
                "stale": stale,
                "tokens": run.tokens,
                "embed_ms": round(run.embed_ms, 1),
            },
        )
        self.report(
            BatchResult(
                batch_id=batch_id,
                claimed=sum(len(w.chunks) for w in writes),
                written=chunk_ids,
                failed=[],
                tokens=run.tokens,
                embed_ms=run.embed_ms,
                stale=stale,
                reused=reused,
            )
        )
