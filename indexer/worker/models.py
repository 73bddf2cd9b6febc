"""The registered models a daemon embeds with, and the work of those it does not
write first (migration 0009).

The **active** model's vectors are written by the row and document queues, as one
model's always were; those writes queue the same chunks for every other registered
model (``model_pending``).  :class:`~indexer.worker.fill.ModelFill` works those queues
off when the row and document queues are empty: newest work first, then the chunks that
were embedded before a model was added (``fill_model`` queues them range by range).  So
a model added while text keeps coming in is kept current for new text first, and
catches up on the old text in the background, until it covers every chunk and can be
activated.  That background work gives way to new text between two model calls.

The daemon keeps every registered model current, not only the active one: the
previous model stays complete after a switch, so switching back is instant.  Dropping
a model stops its work.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from indexer.embedding import TextEmbedder
from indexer.store import ClaimedRow
from indexer.store.models import BatchFigures, RegisteredModel

logger = logging.getLogger(__name__)

#: How often a busy daemon reads the registry again (an idle one reads it on each
#: wake-up): how soon it embeds new text with a model just activated.
REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class LoadedModel:
    """A registered model and the embedder that computes its vectors."""

    id: int | None
    name: str
    in_column: bool
    embedder: TextEmbedder


class ModelStore(Protocol):
    """What the models' work needs of :class:`indexer.store.Store`."""

    def models(self) -> list[RegisteredModel]: ...

    def fill_model(self, model_id: int, batch: int = ...) -> int: ...

    def claim_model_work(
        self,
        model_id: int,
        worker_id: uuid.UUID,
        limit: int,
        lease_seconds: float,
        max_chars: int,
        cache_key: str | None,
    ) -> list[ClaimedRow]: ...

    def finish_model_work(
        self,
        model: tuple[int, str],
        worker_id: uuid.UUID,
        rows: list[ClaimedRow],
        vectors: list[np.ndarray],
        *,
        cache_key: str | None,
        fresh: list[bool],
        batch: BatchFigures,
        max_chars: int,
    ) -> list[int]: ...

    def fail_model_work(
        self,
        model_id: int,
        worker_id: uuid.UUID,
        failures: list[tuple[ClaimedRow, str]],
        *,
        max_attempts: int,
        retry_base_seconds: float,
    ) -> None: ...

    def release_model_work(
        self, model_id: int, worker_id: uuid.UUID, ids: Sequence[int]
    ) -> None: ...

    def record_event(
        self, kind: str, worker_id: uuid.UUID, *, detail: dict[str, Any] | None = None
    ) -> None: ...


#: Gives the embedder of a registered model (None: this daemon cannot run it).
Loader = Callable[[RegisteredModel], TextEmbedder | None]


class ModelSet:
    """The registered models this daemon can run: the active one, and the others.

    ``default`` runs the active model when ``load`` gives nothing for it (a daemon
    built around one embedder: tests, ``indexer embed``).  With no registry (a store
    that registers none), ``default`` is the only model, written to ``chunks.embedding``.
    """

    def __init__(self, store: ModelStore, default: TextEmbedder, load: Loader | None = None):
        self.store = store
        self.default = default
        self.load = load
        self._loaded: dict[int, TextEmbedder] = {}
        self.active = LoadedModel(None, default.name, True, default)
        self.others: list[LoadedModel] = []
        #: Whether this daemon runs the active model: only then does it take rows and
        #: documents (their queues are the active model's); otherwise it only helps the
        #: other models it can run.
        self.runs_active = True
        self._read_at = float("-inf")
        self._registry: tuple[tuple[int, bool], ...] = ()

    def refresh(self, *, now: float | None = None, force: bool = False) -> bool:
        """Read the registry again (at most every REFRESH_SECONDS unless ``force``);
        True when the model written first has changed."""
        clock = time.monotonic() if now is None else now
        if not force and clock - self._read_at < REFRESH_SECONDS:
            return False
        self._read_at = clock
        models = self.store.models()
        shape = tuple((m.id, m.active) for m in models)
        if shape == self._registry:
            return False
        self._registry = shape
        before = self.active
        active: LoadedModel | None = None
        others: list[LoadedModel] = []
        for model in models:
            embedder = self._embedder(model)
            if embedder is None:
                continue
            loaded = LoadedModel(model.id, model.name, model.in_column, embedder)
            if model.active:
                active = loaded
            else:
                others.append(loaded)
        self.runs_active = active is not None
        if active is None:
            active = before
            name = next((m.name for m in models if m.active), "(none)")
            logger.warning(
                "the active model %s cannot run in this daemon: it leaves rows and documents "
                "to the daemons that can, and embeds for the other models only",
                name,
            )
        self.active, self.others = active, others
        for gone in set(self._loaded) - {m.id for m in models}:
            del self._loaded[gone]
        changed = (before.id, before.embedder) != (active.id, active.embedder)
        if changed:
            logger.info("embedding new text with model %s first", active.name)
        return changed

    def _embedder(self, model: RegisteredModel) -> TextEmbedder | None:
        if model.id in self._loaded:
            return self._loaded[model.id]
        embedder = self.load(model) if self.load is not None else None
        if embedder is None and model.active and self.load is None:
            embedder = self.default
        if embedder is not None:
            self._loaded[model.id] = embedder
        return embedder

    @property
    def registered(self) -> int:
        """How many models the registry held when last read."""
        return len(self._registry)

    @property
    def all(self) -> list[LoadedModel]:
        """The active model first, then the others."""
        return [self.active, *self.others]
