"""The Python API for applications.

>>> from indexer import Indexer
>>> with Indexer() as ix:                      # DATABASE_URL, or the embedded server
...     ix.add(["PostgreSQL is a database"])   # rows for the daemon to embed
...     hits = ix.search("which database?", k=5)

``Indexer`` opens its database connection and loads the model only when first needed,
and closes them in ``close()`` (or at the end of a ``with`` block).  It is not
thread-safe: use one per thread.  :class:`indexer.embedding.embedder.Embedder` alone embeds
texts with no database at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.db.connect import resolve_dsn
from indexer.embedding import Embedder, load_embedder
from indexer.exceptions import InvalidInput
from indexer.limits import MAX_K
from indexer.settings import Settings
from indexer.store import SearchHit, Store


class Indexer:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: Embedder | None = None,
        dsn: str | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._embedder = embedder
        self._dsn = dsn
        self._manager: Store | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.settings)
        return self._embedder

    @property
    def store(self) -> Store:
        if self._manager is None:
            dsn = self._dsn or resolve_dsn(self.settings)
            self._manager = Store(dsn, self.settings.schema)
        return self._manager

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors (float32, L2-normalized, shape (n, 384)) for texts; no database needed."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"text {i} is {type(text).__name__}, not a string")
        return self.embedder.embed([t[: self.settings.max_chars] for t in texts])

    def add(
        self, texts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Insert rows for the daemon to embed; return their ids."""
        if metadata is not None and len(metadata) != len(texts):
            raise InvalidInput("texts and metadata must have the same length")
        metas = [json.dumps(m) for m in (metadata or [{}] * len(texts))]
        return self.store.insert_chunks(list(texts), metas)

    def search(
        self, query: str, k: int = 10, *, metadata_filter: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        """The k embedded rows nearest to ``query`` (cosine), best first."""
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be between 1 and {MAX_K}")
        if not query.strip():
            raise InvalidInput("the query is empty")
        vector = self.embed([query])[0]
        return self.store.search(vector, k, metadata_filter=metadata_filter)

    def status(self) -> dict[str, Any]:
        return self.store.status()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> Indexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
