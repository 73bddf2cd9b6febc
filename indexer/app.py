"""The application: the Python API (:class:`Indexer`) and the daemon's wiring (:class:`Daemon`).

>>> from indexer import Indexer
>>> with Indexer() as ix:                      # DATABASE_URL, or the embedded server
...     ix.add(["PostgreSQL is a database"])   # rows for the daemon to embed
...     hits = ix.search("which database?", k=5)
...     ix.add_documents(["A long report ..."])          # chunked by the daemon
...     docs = ix.search_documents("which report?", k=3)

``Indexer`` opens its database connections and loads the model only when first
needed, and closes them in ``close()`` (or at the end of a ``with`` block).  Once it
has opened them (after its first call), threads may share it: its store is a pool.
:class:`indexer.embedding.Embedder` alone embeds texts with no database at all.  The CLI
only parses its arguments and calls these two classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import numpy as np

from indexer import logs
from indexer.db import server
from indexer.db.connect import redact, resolve_dsn
from indexer.embedding import TextEmbedder, load_embedder, load_query_embedder
from indexer.embedding.background import Background
from indexer.embedding.embedder import Embedder
from indexer.embedding.remote import RemoteConfig
from indexer.exceptions import ConfigurationError, DatabaseUnavailable, InvalidInput
from indexer.limits import CONTENT_CHARS, check_k, check_passages
from indexer.metrics import Metrics
from indexer.progress import Progress
from indexer.registry import Embedders, describe_for_registry, reconcile, register_remote
from indexer.settings import Settings, libpq_url, unknown_variables
from indexer.signals import stop_on_signals
from indexer.store import CacheStats, DocumentHit, SearchHit, Store
from indexer.worker import BatchResult, Worker
from indexer.worker.prune import Pruner

logger = logging.getLogger("indexer")

EmbedderLoader = Callable[[Settings], TextEmbedder]

#: Connections of the daemon's store, shared by the worker, its two lease keepers (rows,
#: documents), its pruner and its index builder's checks: short statements, so one may
#: wait a moment for another.
DAEMON_CONNECTIONS = 4
#: Connections of the store of the fill's statements (its backends niced): its claims,
#: and its writes behind them.
BACKGROUND_CONNECTIONS = 2


class Indexer:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: TextEmbedder | None = None,
        dsn: str | None = None,
    ) -> None:
        if settings is None:
            settings = Settings.from_env()
            for line in unknown_variables():
                logger.warning("%s", line)
        self.settings = settings
        self._embedder = embedder
        self._dsn = libpq_url(dsn) if dsn else None
        self._store: Store | None = None
        self._embedders: Embedders | None = None

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = load_query_embedder(self.settings)
        return self._embedder

    @property
    def store(self) -> Store:
        if self._store is None:
            dsn = self._dsn or resolve_dsn(self.settings)
            self._store = Store(dsn, self.settings.schema)
        return self._store

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors (float32, L2-normalized, shape (n, 384)) for texts; no database needed."""
        if isinstance(texts, str):
            raise InvalidInput("texts must be a list of strings, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"text {i} is {type(text).__name__}, not a string")
        return self.embedder.embed(list(texts))

    def add(
        self, texts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Insert rows for the daemon to embed; return their ids."""
        if metadata is not None and len(metadata) != len(texts):
            raise InvalidInput("texts and metadata must have the same length")
        metas = [json.dumps(m) for m in (metadata or [{}] * len(texts))]
        return self.store.insert_chunks(list(texts), metas)

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        filter: dict[str, Any] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        max_chars: int = CONTENT_CHARS,
        model: str | None = None,
    ) -> list[SearchHit]:
        """The k embedded rows nearest to ``query`` (cosine), best first; only rows whose
        metadata contains ``filter`` (``metadata_filter`` is the same argument, by the
        name it had first); by ``model``'s vectors (None: the active model's)."""
        wanted = _one_filter(filter, metadata_filter)
        check_k(k)
        if not query.strip():
            raise InvalidInput("the query is empty")
        embedder, name = self._query_model(model)
        vector = embedder.embed_queries([query])[0]
        return self.store.search(vector, k, metadata_filter=wanted, max_chars=max_chars, model=name)

    def _query_model(self, model: str | None) -> tuple[TextEmbedder, str]:
        """The embedder of the model a search names (None: the active one), and its
        name, which the search passes on: the query is compared with that model's
        vectors even if another is activated meanwhile."""
        if self._embedders is None:
            self._embedders = Embedders(self.settings, self.embedder)
        return self._embedders.for_query(self.store.models(), model)

    def models(self) -> list[dict[str, Any]]:
        """Every registered model with its coverage (``indexer_model_status``)."""
        return self.store.model_status()

    def add_model(
        self,
        folder: str,
        *,
        name: str | None = None,
        pooling: str | None = None,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        max_tokens: int | None = None,
        variant: str = "fp32",
        halfvec: bool = False,
    ) -> str:
        """Register the model in ``folder`` (``"packaged"``: all-MiniLM-L6-v2); the
        daemons then embed every chunk with it in the background.  Its graph is built
        now, so a model that cannot run is refused before it is registered.  Returns
        its name."""
        record = describe_for_registry(
            folder,
            name=name,
            pooling=pooling,
            query_prefix=query_prefix,
            document_prefix=document_prefix,
            max_tokens=max_tokens,
            variant=variant,
        )
        opened = Embedder(record=record, cache_dir=self.settings.model_cache, threads=1)
        chosen = name or (f"{opened.name}-halfvec" if halfvec else opened.name)
        self.store.add_model(
            chosen,
            dimension=opened.dim,
            record=record.as_dict(),
            fingerprint=record.fingerprint,
            halfvec=halfvec,
        )
        return chosen

    def add_remote_model(
        self, name: str, config: RemoteConfig, *, halfvec: bool = False, probe: bool = True
    ) -> None:
        """Register a model an OpenAI-compatible server computes (see
        :func:`indexer.registry.register_remote`); the daemons then embed every chunk
        with it in the background."""
        register_remote(self.store, name, config, halfvec=halfvec, probe=probe)

    def activate_model(self, name: str, *, force: bool = False) -> int:
        """Make ``name`` the active model (see Store.activate_model); how many chunks
        lacked its vector (0 unless ``force``)."""
        return self.store.activate_model(name, force=force)

    def drop_model(self, name: str) -> None:
        """Drop a model that is not active, and its vectors."""
        self.store.drop_model(name)

    def add_documents(
        self, texts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Insert documents of any length into the built-in ``documents`` table (the
        daemon chunks and embeds them); return their ids, the documents' keys."""
        if isinstance(texts, str):
            raise InvalidInput("texts must be a list of strings, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"text {i} is {type(text).__name__}, not a string")
        if metadata is not None and len(metadata) != len(texts):
            raise InvalidInput("texts and metadata must have the same length")
        for i, meta in enumerate(metadata or []):
            if not isinstance(meta, dict):
                raise InvalidInput(f"metadata {i} is {type(meta).__name__}, not a dict")
        metas = [json.dumps(m) for m in (metadata or [{}] * len(texts))]
        return self.store.insert_documents(list(texts), metas)

    def add_source(
        self,
        table: str,
        *,
        key: str | None = None,
        text: Sequence[str],
        metadata: Sequence[str] = (),
        metadata_json: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Register your own table as a source: ``text`` columns are the document's text
        (joined by a blank line), ``metadata`` columns (and the jsonb ``metadata_json``
        column's object) its metadata; ``key`` (default: the single-column primary key)
        a unique NOT NULL column.  Its triggers queue every change; the daemon
        back-fills the rows already there.  Returns the source's row (``name``, ...,
        ``estimated_rows``); raises SourceError with the reason otherwise."""
        return self.store.add_source(
            table, key=key, text=text, metadata=metadata, metadata_json=metadata_json, name=name
        )

    def remove_source(self, name: str) -> int:
        """Unregister a source (its triggers, documents and chunks go; the table stays);
        return the number of chunks deleted."""
        return self.store.remove_source(name)

    def sources(self) -> list[dict[str, Any]]:
        """Per source (the ``indexer_source_status`` view): documents indexed, pending,
        in flight, failed, truncated; chunks; lag; back-fill progress."""
        return self.store.source_status()

    def search_documents(
        self,
        text: str,
        k: int = 10,
        *,
        filter: dict[str, Any] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        source: str | None = None,
        passages: int = 3,
        model: str | None = None,
    ) -> list[DocumentHit]:
        """The k documents (of every source, or of ``source``) whose best passage is
        nearest to ``text`` (cosine), best first, each with its ``passages`` best
        passages; only passages whose metadata contains ``filter`` (or
        ``metadata_filter``, its name in :meth:`search`: either name works in both);
        by ``model``'s vectors (None: the active model's)."""
        filter = _one_filter(filter, metadata_filter)
        check_k(k)
        check_passages(passages)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("the query is empty")
        embedder, name = self._query_model(model)
        vector = embedder.embed_queries([text])[0]
        return self.store.search_documents(
            vector, k, filter=filter, source=source, passages=passages, model=name
        )

    def status(self) -> dict[str, Any]:
        """The ``indexer_status`` view: of the rows inserted into chunks, the backlog, in
        flight, embedded, failed, rate and ETA; apart from them, the sources' passages
        and documents (``passages``, ``documents``, ``documents_pending``,
        ``documents_in_flight``, ``documents_indexed``, ``documents_failed``,
        ``passages_per_second``)."""
        return self.store.status()

    def failed_rows(self, limit: int = 20) -> list[dict[str, Any]]:
        """Rows parked as failed: id, attempts, last_error, updated_at."""
        return self.store.failed_rows(limit)

    def failed_documents(self, limit: int = 20) -> list[dict[str, Any]]:
        """Documents parked as failed: ``source`` (its name), ``key``, ``attempts``,
        ``last_error``, ``queued_at``."""
        return self.store.failed_documents(limit)

    def retry_failed(self, ids: Sequence[int] | None = None) -> list[int]:
        """Re-queue rows parked as failed (all, or these ids); return the ids re-queued.
        Documents: :meth:`retry_failed_documents`."""
        return self.store.retry_failed(ids)

    def retry_failed_documents(self, source: str | None = None) -> dict[str, int]:
        """Re-queue the documents parked as failed, of every source or of ``source``
        (its name); return how many, per source name (SourceError: no such source)."""
        return self.store.retry_failed_documents(source)

    def prune_events(self) -> int:
        """Delete events older than INDEXER_EVENTS_RETENTION_DAYS; return how many."""
        return self.store.prune_events(self.settings.events_retention_days * 86400)

    def cache_stats(self) -> CacheStats:
        """The vector cache's entries, disk size and hit rate."""
        return self.store.cache_stats()

    def prune_cache(self) -> int:
        """Delete cached vectors unused for INDEXER_CACHE_MAX_AGE_DAYS or beyond
        INDEXER_CACHE_MAX_ENTRIES (least recently used first); return how many."""
        return Pruner(self.store, self.settings).prune_cache()

    def purge_cache(
        self,
        *,
        texts: Sequence[str] = (),
        ids: Sequence[int] = (),
        hashes: Sequence[bytes] = (),
    ) -> int:
        """Delete the cached vectors of these texts (as the daemon reads them: the
        first INDEXER_MAX_CHARS characters; and whole), of these rows' current text,
        and of these sha256 digests, under every model; return how many."""
        return self.store.cache_purge(
            texts=texts, ids=ids, hashes=hashes, max_chars=self.settings.max_chars
        )

    def clear_cache(self) -> None:
        """Delete every cached vector."""
        self.store.cache_clear()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._embedders is not None:
            self._embedders.close()
            self._embedders = None

    def __enter__(self) -> Indexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_filter(
    filter: dict[str, Any] | None, metadata_filter: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The metadata filter given by either of its names (not both)."""
    if filter is not None and metadata_filter is not None:
        raise InvalidInput(
            "filter and metadata_filter are the same argument: give the metadata filter once"
        )
    wanted = metadata_filter if filter is None else filter
    if wanted is not None and not isinstance(wanted, dict):
        raise InvalidInput(
            f'the metadata filter must be a dict such as {{"lang": "en"}}, '
            f"not {type(wanted).__name__}"
        )
    return wanted


class Daemon:
    """`indexer run`: one worker beside its store, metrics, optional HTTP API and
    progress bar, stopped gracefully by SIGINT/SIGTERM.

    ``progress``: a terminal to draw the ``--once`` progress bar on (None: no bar).
    ``http``: (host, port) to serve the HTTP API on (None: no API).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        once: bool = False,
        http: tuple[str, int] | None = None,
        progress: TextIO | None = None,
        load: EmbedderLoader = load_embedder,
    ) -> None:
        self.settings = settings
        self.once = once
        self.http = http
        self.progress_stream = progress
        self.load = load

    def run(self) -> None:
        settings = self.settings
        lock = (
            server.run_lock(settings.data_dir)
            if settings.uses_embedded_server
            else contextlib.nullcontext()
        )
        with lock:
            if settings.uses_embedded_server:
                info = server.start_server(settings.data_dir)
                dsn, where = info.dsn, f"the embedded PostgreSQL in {info.data_dir}"
            else:
                dsn, where = resolve_dsn(settings), "DATABASE_URL"
            embedder = self.load(settings)
            with Store(dsn, settings.schema, pool_size=DAEMON_CONNECTIONS, name="worker") as store:
                # Fail fast on a missing schema or pgvector (one line, nothing before
                # it); an outage is the worker's to ride out (it retries up to
                # INDEXER_DB_DOWN_TIMEOUT).
                with contextlib.suppress(DatabaseUnavailable):
                    store.check()
                    store.check_owner()
                # Which database this is, so that an empty one is noticed at once (another
                # terminal without the same INDEXER_DATA_DIR gets a database of its own).
                logger.info(
                    "using database %s (%s), schema %r", redact(dsn), where, settings.schema
                )
                # The models filled beside the active one run at the lowest CPU priority:
                # their model calls, and their statements when the server runs here.
                low = Store(
                    dsn,
                    settings.schema,
                    pool_size=BACKGROUND_CONNECTIONS,
                    name="background",
                    check=False,
                    background=True,
                )
                with low, Background() as background:
                    embedders = self._models(store, embedder, background)
                    try:
                        self._check_chunking(store)
                        self._serve(dsn, store, embedder, embedders, low)
                    finally:
                        embedders.close()

    def _check_chunking(self, store: Store) -> None:
        """Refuse chunk settings other than those the documents were cut with (one
        line): new documents would be cut otherwise than the others, silently."""
        s = self.settings
        try:
            tokens, overlap, since = store.record_chunking(s.chunk_tokens, s.chunk_overlap)
        except DatabaseUnavailable:
            return
        if (tokens, overlap) != (s.chunk_tokens, s.chunk_overlap):
            raise ConfigurationError(
                f"documents are cut into passages of {tokens} tokens, {overlap} overlapping "
                f"(since {since:%Y-%m-%d %H:%M}); INDEXER_CHUNK_TOKENS={s.chunk_tokens} and "
                f"INDEXER_CHUNK_OVERLAP={s.chunk_overlap} would cut new ones otherwise: set "
                "them back, or run `indexer sources recut` with the new settings to cut every "
                "document again"
            )

    def _models(self, store: Store, embedder: TextEmbedder, background: Background) -> Embedders:
        """The registered models, checked against their files before any work (one line
        for a model changed on disk).  While the database is away the check waits for
        the next start; the embedders still open each model only from its record and
        fingerprint, so no model's vectors are computed by another."""
        embedders = Embedders(self.settings, embedder, background)
        try:
            reconcile(store.models(), embedder, store)
            for model in store.models():
                if model.kind == "remote":
                    embedders.loader(model)  # without its key: left to the daemons with it
                else:
                    embedders.get(model)
        except DatabaseUnavailable:
            pass
        return embedders

    def _serve(
        self,
        dsn: str,
        store: Store,
        embedder: TextEmbedder,
        embedders: Embedders,
        low: Store,
    ) -> None:
        metrics = Metrics()
        progress = self._progress(store)
        callbacks: list[Callable[[BatchResult], None]] = [metrics.observe_batch]
        if progress is not None:
            callbacks.append(progress.update)

        def on_batch(result: BatchResult) -> None:
            for callback in callbacks:
                callback(result)

        worker = Worker(
            self.settings,
            store,
            embedder,
            on_batch=on_batch,
            load_model=embedders.loader,
            background=embedders.background,
            fill_store=low,
        )
        # On the bar's terminal, log lines print above the bar, which stays one line.
        above = logs.above_progress(progress) if progress is not None else contextlib.nullcontext()
        try:
            with above, self._http_api(dsn, embedder, metrics), stop_on_signals(worker.stop_event):
                worker.run(once=self.once)
        finally:
            if progress is not None:
                progress.finish()  # before anything else is printed, an error included

    def _progress(self, store: Store) -> Progress | None:
        stream = self.progress_stream
        # A bar only on a terminal, and never among JSON log lines (collectors read those).
        if not self.once or stream is None or self.settings.log_format == "json":
            return None
        if not (hasattr(stream, "isatty") and stream.isatty()):
            return None
        try:
            backlog = int(store.queue_status()["backlog"])
        except DatabaseUnavailable:
            backlog = 0
        return Progress(backlog, stream)

    @contextlib.contextmanager
    def _http_api(self, dsn: str, embedder: TextEmbedder, metrics: Metrics) -> Iterator[None]:
        if self.http is None:
            yield
            return
        from indexer.http import HttpServer, create_app  # the web stack only when asked for

        host, port = self.http
        app = create_app(self.settings, dsn=dsn, embedder=embedder, metrics=metrics)
        api = HttpServer(app, host, port)
        api.start()
        logger.info("HTTP API on %s, authentication %s", api.url, app.state.authentication)
        try:
            yield
        finally:
            api.stop()
