"""The model registry as a daemon, a search and ``indexer models`` use it.

The registry itself is the ``models`` table (migration 0009, read and written through
:mod:`indexer.store.models`); this module joins it to the models on disk:

* :func:`reconcile`, at daemon start: the model the settings name must be registered
  under its fingerprint.  The model the upgrade registered is adopted by the first
  daemon that runs it (its record and fingerprint filled in); from then on a model
  whose files give another fingerprint under a registered name is refused with one
  line: its vectors would no longer be comparable with those stored.
* :class:`Embedders`: the embedder of each registered model, opened from its record
  (the settings' embedder for its own fingerprint), once.  A query is embedded by the
  model whose vectors it is compared with, and the search names that model to the
  database, so a switch between the two steps cannot mix models.
* :func:`register_remote`: a remote model (an OpenAI-compatible server), asked once for
  a vector before it is registered, so that a wrong URL, key or dimension is refused
  then rather than by every batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from typing import Any

from indexer.embedding import TextEmbedder
from indexer.embedding.background import Background, background_threads
from indexer.embedding.describe import ModelRecord, describe_folder, describe_packaged
from indexer.embedding.embedder import Embedder
from indexer.embedding.remote import RemoteConfig, RemoteEmbedder
from indexer.exceptions import ConfigurationError, InvalidInput, ModelChanged, ModelNotFound
from indexer.settings import Settings
from indexer.store.models import RegisteredModel

logger = logging.getLogger(__name__)


def record_of(embedder: TextEmbedder) -> ModelRecord | None:
    """The record of an :class:`Embedder` (None for a test's stand-in)."""
    record = getattr(embedder, "record", None)
    return record if isinstance(record, ModelRecord) else None


def reconcile(models: list[RegisteredModel], embedder: TextEmbedder, store: Any) -> None:
    """Check the settings' model against the registry at daemon start (see the module
    docstring); adopt the upgrade's model when it is that one, or when no chunk has
    a vector yet.  ConfigurationError or ModelChanged with one line otherwise."""
    record = record_of(embedder)
    if record is None:
        return
    fingerprint = record.fingerprint
    if any(m.fingerprint == fingerprint for m in models):
        return
    named = next((m for m in models if m.name == embedder.name), None)
    unadopted = next((m for m in models if m.fingerprint is None), None)
    free = named is None or named is unadopted
    if (
        unadopted is not None
        and free
        and unadopted.dimension == embedder.dim
        and (unadopted is named or store.nothing_embedded())
    ):
        store.adopt_model(unadopted.id, embedder.name, record.as_dict(), fingerprint)
        logger.info("model %s registered as the store's model", embedder.name)
        return
    if named is not None and named.fingerprint is not None:
        raise ModelChanged(
            f"model {named.name}: its files now give fingerprint {fingerprint[:12]}, the "
            f"registry holds {named.fingerprint[:12]} (its stored vectors came from other "
            "files, weights or settings): restore the files, or register the changed model "
            "under another name (indexer models add) and activate it"
        )
    registered = ", ".join(m.name for m in models) or "none"
    raise ConfigurationError(
        f"model {embedder.name} (INDEXER_MODEL_DIR / INDEXER_MODEL_VARIANT) is not "
        f"registered (registered: {registered}): add it with `indexer models add FOLDER` "
        "(then `indexer models activate NAME`), or unset those variables to run the "
        "registered models"
    )


class Embedders:
    """The embedder of each registered model, opened once (thread-safe).

    ``configured`` serves the model with its fingerprint (and every model, when it has
    no record: a test's stand-in); the others are opened from their records, with the
    settings' threads, provider and token budget.  A daemon passes its ``background``
    thread: the others are models it fills beside the active one, so their sessions'
    threads are started there, at the lowest CPU priority
    (:mod:`indexer.embedding.background`); a search's models are opened at normal
    priority.
    """

    def __init__(
        self, settings: Settings, configured: TextEmbedder, background: Background | None = None
    ) -> None:
        self.settings = settings
        self.configured = configured
        self.background = background
        self._open: dict[str, TextEmbedder] = {}
        self._lock = threading.Lock()

    def get(self, model: RegisteredModel) -> TextEmbedder:
        """The model's embedder; ModelNotFound / ModelChanged with one line when its
        files are missing or changed, ConfigurationError when a remote model's API key
        is not in this process's environment."""
        if model.kind == "remote":
            return self._remote(model)
        mine = record_of(self.configured)
        if mine is None or model.fingerprint == mine.fingerprint:
            return self.configured
        if model.fingerprint is None or model.record is None:
            # The model the upgrade registered, not adopted yet: the settings' model only
            # if it is that one (same name and dimension; the first daemon that runs it
            # checks the rest, and records its fingerprint).
            if model.name == self.configured.name and model.dimension == self.configured.dim:
                return self.configured
            raise ModelNotFound(
                f"model {model.name} has no record yet, and the settings name another "
                f"({self.configured.name}): run a daemon with its files once "
                "(INDEXER_MODEL_DIR, INDEXER_MODEL_VARIANT) so that it is recorded"
            )
        with self._lock:
            if model.name not in self._open:
                record = ModelRecord.from_dict(model.record)
                if model.fingerprint != record.fingerprint:
                    raise ModelChanged(f"model {model.name}: its record is not its fingerprint's")
                self._open[model.name] = self._local(record)
            return self._open[model.name]

    def _local(self, record: ModelRecord) -> Embedder:
        s = self.settings
        threads = s.threads or None
        if self.background is not None and threads is None:
            threads = background_threads()
        open_it = functools.partial(
            Embedder,
            record=record,
            cache_dir=s.model_cache,
            threads=threads,
            providers=(s.provider,),
            token_budget=s.token_budget,
            max_chars=s.max_chars,
            # Beside the settings' model in this process: see session.py.
            spin=False,
        )
        return open_it() if self.background is None else self.background.call(open_it)

    def _remote(self, model: RegisteredModel) -> TextEmbedder:
        with self._lock:
            if model.name not in self._open:
                config = remote_config(model)
                if config.fingerprint != model.fingerprint:
                    raise ModelChanged(f"model {model.name}: its record is not its fingerprint's")
                embedder = RemoteEmbedder(model.name, config)
                embedder.check_key()
                self._open[model.name] = embedder
            return self._open[model.name]

    def close(self) -> None:
        """Close the remote models' connections (local models hold none)."""
        with self._lock:
            for embedder in self._open.values():
                if isinstance(embedder, RemoteEmbedder):
                    embedder.close()
            self._open.clear()

    def loader(self, model: RegisteredModel) -> TextEmbedder | None:
        """:meth:`get` for a running daemon: a model it cannot open is logged and left
        to the daemons that can (None)."""
        try:
            return self.get(model)
        except (ModelNotFound, ConfigurationError) as exc:
            logger.error("model %s cannot run in this daemon: %s", model.name, exc)
            return None

    def for_query(
        self, models: list[RegisteredModel], name: str | None
    ) -> tuple[TextEmbedder, str]:
        """The embedder and name of the model a search names (None: the active one)."""
        if not models:
            return self.configured, name or self.configured.name
        if name is None:
            chosen = next((m for m in models if m.active), None)
            if chosen is None:
                raise ModelNotFound("no model is active: activate one (indexer models activate)")
        else:
            chosen = next((m for m in models if m.name == name), None)
            if chosen is None:
                known = ", ".join(m.name for m in models)
                raise InvalidInput(f"no model named {name!r} (registered: {known})")
        return self.get(chosen), chosen.name


def remote_config(model: RegisteredModel) -> RemoteConfig:
    """A remote model's endpoint, from its registry record."""
    record = {k: v for k, v in (model.record or {}).items() if k != "kind"}
    return RemoteConfig.from_dict(record)


def register_remote(
    store: Any, name: str, config: RemoteConfig, *, halfvec: bool = False, probe: bool = True
) -> None:
    """Register a remote model; with ``probe``, after one vector asked of its server
    (of the dimension registered, with the key its variable holds).  One line (an
    :class:`~indexer.exceptions.IndexerError`) for a model that cannot work."""
    if probe:
        embedder = RemoteEmbedder(name, config)
        try:
            embedder.check_key()
            embedder.embed(["dimension probe"])
        finally:
            embedder.close()
    store.add_model(
        name,
        dimension=config.dimension,
        record={"kind": "remote", **config.as_dict()},
        fingerprint=config.fingerprint,
        halfvec=halfvec,
    )


def describe_for_registry(
    folder: str,
    *,
    name: str | None = None,
    pooling: str | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    max_tokens: int | None = None,
    variant: str = "fp32",
) -> ModelRecord:
    """A model folder (or ``packaged`` for the packaged all-MiniLM-L6-v2), described for
    ``indexer models add``."""
    if folder == "packaged":
        record = describe_packaged(variant=variant, max_tokens=max_tokens)
        if any(x is not None for x in (pooling, query_prefix, document_prefix)):
            raise ConfigurationError("the packaged model's pooling and prefixes are its own")
        return record if name is None else dataclasses.replace(record, name=name)
    return describe_folder(
        folder,
        name=name,
        pooling=pooling,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        max_tokens=max_tokens,
        variant=variant,
    )
