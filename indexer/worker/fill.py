"""The work of the registered models a daemon does not write first: their queues,
worked off in the background (:class:`ModelFill`; see :mod:`indexer.worker.models`)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.embedding import TextEmbedder, Tokenized
from indexer.embedding.background import Background
from indexer.embedding.remote import RemoteEmbedder
from indexer.exceptions import ProviderAway
from indexer.settings import Settings
from indexer.store import ClaimedRow
from indexer.store.models import BatchFigures
from indexer.worker.claim import Claim
from indexer.worker.embed import Embedded, Groups, embed_groups
from indexer.worker.models import LoadedModel, ModelSet, ModelStore
from indexer.worker.outage import ProviderOutage
from indexer.worker.pace import SLICE_SECONDS, Pace

logger = logging.getLogger(__name__)

#: How often a fill waiting for its write in flight looks for new text.
SEND_CHECK_SECONDS = 0.005


class ModelFill:
    """Embeds, for each model this daemon runs, the chunks queued for it (see the
    module docstring); one claim a step.

    **Preemptible**: a claim's texts are embedded in slices, shortest first, each about
    :data:`~indexer.worker.pace.SLICE_SECONDS` of model time (:class:`Pace`); between
    two slices ``yield_to`` says whether other work is waiting (new text notified, or a
    stop).  If so, the step ends there and the claim is kept, with the vectors done so
    far: the loop embeds and writes the new rows, and the next fill step goes on with
    the claim where it stopped.  A new row so waits for one slice, not for the whole
    claim.  The claim is written once, when it is finished, as it always was.

    Why keep the claim rather than write what is done and give the rest back: under a
    steady stream of new rows (one every 0.2 s in the switch bench) on a loaded machine,
    most claims are interrupted after a slice or two, and giving back cost a write, a
    release, a new claim and tokenizing the same texts again for every few vectors:
    about 5 vectors a claim and a fill slower than before slicing.  A kept claim costs
    nothing until it goes on.  Its chunks stay leased: a claim kept past half its lease
    (the loop busy with rows all that time) is finished as it stands (vectors written,
    the rest given back with ``release_model_work``: no attempt counted, claimable again
    at once) rather than resumed, and on the way out the same happens (:meth:`flush`).
    A daemon killed meanwhile loses nothing: the chunks return to the queue when their
    lease ends.  Why a notification rather than a look at the queues: it costs no
    statement per slice.

    A **remote** model's claim is one slice: its server's time is not this machine's
    cores, and its requests go out together (``in_flight``).  When its server is away
    (:class:`~indexer.exceptions.ProviderAway`), the claim goes back to the queue with
    no attempt counted, a ``provider_away`` event says so, and the model's work pauses
    for what the server asked (or twice the last pause, up to a minute) while the other
    models' work goes on.  Its calls wait on the server less than the rows' own
    (:data:`~indexer.worker.embed.BACKGROUND_PATIENCE_S`): new rows wait behind them.

    In a daemon, the model calls run on its ``background`` thread, at the lowest CPU
    priority (:mod:`indexer.embedding.background`): the fill takes the cores only when
    the new rows, the searches and the database leave them idle.
    """

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        models: ModelSet,
        worker_id: uuid.UUID,
        *,
        cache: bool,
        yield_to: Callable[[], bool] = lambda: False,
        background: Background | None = None,
    ) -> None:
        self.settings = settings
        #: Where the model calls run (None: on the calling thread).
        self.background = background
        self.store = store
        self.models = models
        self.worker_id = worker_id
        self.cache = cache
        self.yield_to = yield_to
        #: Model time a slice aims at (tests make it 0: one text a slice).
        self.slice_seconds = SLICE_SECONDS
        self.written = 0
        #: Times a claim stopped between two slices because other work was waiting.
        self.yielded = 0
        self._paces: dict[int, Pace] = {}
        self._kept: _Kept | None = None
        #: The outages of remote models' servers, by model id.
        self._outages: dict[int, ProviderOutage] = {}
        #: With a background thread (a daemon), a finished claim is written on a thread
        #: of its own while the next one is embedded: at most one write in flight.
        self._writer = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="indexer-fill-write")
            if background is not None
            else None
        )
        self._writing: Future[None] | None = None
        #: A finished claim waiting for the write in flight to end: the loop was given new
        #: text meanwhile (see :meth:`_send`).
        self._unsent: _Kept | None = None

    def step(self) -> bool:
        """One claim of one model's work (the claim kept last time, if any); False when
        no model this daemon runs has any."""
        if self._unsent is not None:
            self._send()
            return True
        if self._kept is not None:
            return self._resume(self._kept)
        for model in self.models.all:
            if model.id is None or self._waiting(model.id):
                continue
            if self._batch(model):
                return True
        return False

    def _waiting(self, model_id: int) -> bool:
        outage = self._outages.get(model_id)
        return outage is not None and outage.pausing

    def active_step(self) -> bool:
        """One claim of the active model's own queued work, if it has any: text written
        with the model active before, by a batch in flight when the switch came.  Taken
        before any other work, so the active model's answers lack it for one claim at
        most, and never cut short.  Nothing to ask while a single model is registered."""
        active = self.models.active
        if self.models.registered < 2 or active.id is None or self._waiting(active.id):
            return False
        # Never waits here for a write in flight: the notice of new text that made the
        # last fill step stop was consumed then, so a wait now would not see it, and the
        # loop would take that text only once the write is done.
        if self._unsent is not None and not self._send(wait_for_write=False):
            return False  # the loop's rows and documents first; the next fill step sends
        kept = self._kept
        if kept is not None and kept.model.id == active.id:  # kept before the switch
            return self._resume(kept)
        return self._batch(active, fill=False)

    def flush(self) -> None:
        """Wait for the write in flight, if any; finish the claim kept back, if any, as
        it stands: write its vectors, give back the rest (on the way out)."""
        self._written()
        if self._unsent is not None:
            self._finish(self._unsent)
            self._unsent = None
        if self._kept is not None:
            self._finish(self._kept)
            self._kept = None

    def close(self) -> None:
        """:meth:`flush`, then end the writing thread."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)

    def _write(self, kept: _Kept) -> None:
        """Write a finished claim: at once, or on the writing thread (:meth:`_send`).
        The fill's claims, writes and slices then cost little beside its model calls:
        the write (the new model's HNSW index grows with each vector) goes on in
        PostgreSQL while the next claim is embedded, and the loop is free meanwhile to
        take new rows."""
        if self._writer is None:
            self._finish(kept)
            return
        assert self._unsent is None  # every step sends it before it embeds more
        self._unsent = kept
        self._send()

    def _send(self, *, wait_for_write: bool = True) -> bool:
        """Hand the finished claim to the writing thread once the write in flight is
        done (its error, such as the database going away, is raised here, to the loop);
        False when new text came first: the claim waits for the next fill step, and the
        loop takes the new text rather than wait behind a write (at 100,000 chunks a
        claim's write took most of a second).  Without ``wait_for_write``, False at once
        while a write is in flight."""
        assert self._writer is not None
        writing = self._writing
        while writing is not None and not writing.done():
            if not wait_for_write or self.yield_to():
                return False
            wait([writing], timeout=SEND_CHECK_SECONDS)
        self._written()
        kept, self._unsent = self._unsent, None
        if kept is not None:
            self._writing = self._writer.submit(self._finish, kept)
        return True

    def _written(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _batch(self, model: LoadedModel, *, fill: bool = True) -> bool:
        assert model.id is not None
        s = self.settings
        cache_key = model.embedder.cache_key if self.cache else None
        # As many as the row loop claims: sorted by length together, so that each slice's
        # texts are of about one length, and one claim's statements serve more vectors.
        size = max(s.claim_size, s.batch_size)
        rows = self.store.claim_model_work(
            model.id, self.worker_id, size, s.lease_seconds, s.max_chars, cache_key
        )
        if not rows:
            return fill and self.store.fill_model(model.id) > 0
        claim = Claim.of(rows, model.embedder.tokenize, 0.0)
        reused, _ = claim.take_reused()
        done = _Done([(r, r.cached, False) for r in reused if r.cached is not None])
        kept = _Kept(model, claim, done, cache_key, time.monotonic())
        return self._go_on(kept, preemptible=fill and self._kept is None)

    def _resume(self, kept: _Kept) -> bool:
        if time.monotonic() - kept.leased_at > self.settings.lease_seconds / 2:
            self.flush()  # its lease may end before it does: claimed again, afresh
            return True
        return self._go_on(kept, preemptible=True)

    def _go_on(self, kept: _Kept, *, preemptible: bool) -> bool:
        """Embed the claim's next slices; write it once finished, or keep it when other
        work is waiting (``preemptible``)."""
        start = time.perf_counter()
        finished = self._embed_slices(kept, preemptible)
        kept.embed_ms += (time.perf_counter() - start) * 1000
        if finished:
            if self._kept is kept:
                self._kept = None
            self._write(kept)
        else:
            self.yielded += 1
            self._kept = kept
        return True

    def _embed_slices(self, kept: _Kept, preemptible: bool) -> bool:
        """Embed the claim's texts a slice at a time; False when it stopped after a
        slice because other work is waiting (the rest stays in the claim)."""
        model, claim, done = kept.model, kept.claim, kept.done
        assert model.id is not None
        pace = self._paces.setdefault(model.id, Pace(self.slice_seconds))
        remote = isinstance(model.embedder, RemoteEmbedder)
        while claim.groups:
            size = len(claim.groups) if remote else pace.slice(claim.tokenized.lengths)
            groups, tokenized, _ = claim.take(size)
            start = time.perf_counter()
            try:
                embedded = self._embed(model.embedder, groups, tokenized)
            except ProviderAway as exc:
                self._server_away(model, [r.id for g in groups for r in g], exc)
                return True  # finished as it stands: the rest given back
            self._back(model)
            if not embedded.bad:  # a failing slice's time is its bisection's, not the pace
                pace.observe(tokenized.lengths, time.perf_counter() - start)
            done.tokens += sum(tokenized.lengths)
            done.detail = embedded.detail
            for group, vector in embedded.good:
                done.written.extend((r, vector, i == 0) for i, r in enumerate(group))
            done.failures.extend((r, error) for group, error in embedded.bad for r in group)
            if preemptible and claim.groups and self.yield_to():
                return False
        return True

    def _embed(self, embedder: TextEmbedder, groups: Groups, tokenized: Tokenized) -> Embedded:
        if self.background is None:
            return embed_groups(embedder, groups, tokenized, background=True)
        return self.background.call(embed_groups, embedder, groups, tokenized, background=True)

    def _server_away(self, model: LoadedModel, ids: list[int], exc: ProviderAway) -> None:
        """A remote model's server is busy or down: the slice's chunks back to the queue
        (no attempt counted), an event when its outage begins, and its work paused."""
        assert model.id is not None
        self.store.release_model_work(model.id, self.worker_id, ids)
        # Its first pause at least a second: the fill is background work.
        outage = self._outages.setdefault(model.id, ProviderOutage(first_wait=0.5))
        if outage.begins(exc, model.name):
            self.store.record_event("provider_away", self.worker_id, detail=outage.detail())

    def _back(self, model: LoadedModel) -> None:
        """The model's server answered: its next outage is a new one."""
        assert model.id is not None
        outage = self._outages.get(model.id)
        if outage is not None:
            outage.over()

    def _finish(self, kept: _Kept) -> None:
        """Write a claim's vectors and failures, and give back its chunks not embedded;
        each part forgotten once committed (a write cut off by an outage is tried again
        by the next flush)."""
        model, done = kept.model, kept.done
        assert model.id is not None
        s = self.settings
        written = done.written
        if written:
            figures = BatchFigures(
                uuid.uuid4(), done.tokens, kept.embed_ms, len(done.failures), done.detail
            )
            stored = self.store.finish_model_work(
                (model.id, model.name),
                self.worker_id,
                [r for r, _, _ in written],
                [v for _, v, _ in written],
                cache_key=kept.cache_key,
                fresh=[f for _, _, f in written],
                batch=figures,
                max_chars=s.max_chars,
            )
            done.written = []
            self.written += len(stored)
            logger.info(
                "model %s: %d vectors written (%d without a model call), %d failed",
                model.name,
                len(stored),
                sum(1 for _, _, f in written if not f),
                len(done.failures),
            )
        if done.failures:
            self.store.fail_model_work(
                model.id,
                self.worker_id,
                done.failures,
                max_attempts=s.max_attempts,
                retry_base_seconds=s.retry_base_seconds,
            )
            done.failures = []
        rest = kept.claim.ids
        if rest:
            self.store.release_model_work(model.id, self.worker_id, rest)
            kept.claim.drop(set(rest))


@dataclass
class _Done:
    """What a fill claim's slices have produced so far: vectors (each with whether the
    model computed it, rather than the cache or an equal text), failures, tokens."""

    written: list[tuple[ClaimedRow, np.ndarray, bool]]
    failures: list[tuple[ClaimedRow, str]] = field(default_factory=list)
    tokens: int = 0
    #: What a remote model's server reported (one slice a claim: see ModelFill).
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Kept:
    """A fill claim on its way through the model: what is left of it (``claim``), what
    is done, and when it was leased (monotonic seconds)."""

    model: LoadedModel
    claim: Claim
    done: _Done
    cache_key: str | None
    leased_at: float
    embed_ms: float = 0.0
