"""The Python API for applications.

>>> from indexer import Indexer
>>> with Indexer() as ix:                      # DATABASE_URL, or the embedded server
...     ix.add(["PostgreSQL is a database"])   # rows for the daemon to embed
...     hits = ix.search("which database?", k=5)

``Indexer`` opens its database connection and loads the model only when first needed,
and closes them in ``close()`` (or at the end of a ``with`` block).  It is not
thread-safe: use one per thread.  :class:`indexer.embedder.Embedder` alone embeds
texts with no database at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.db import resolve_dsn
from indexer.embedder import Embedder
from indexer.exceptions import InvalidInput
from indexer.manager import Manager, SearchHit
from indexer.settings import Settings

MAX_K = 1000


def load_embedder(settings: Settings) -> Embedder:
    return Embedder(
        settings.model_dir,
        cache_dir=settings.model_cache,
        threads=settings.threads or None,
        providers=(settings.provider,),
        token_budget=settings.token_budget,
        variant=settings.model_variant,
    )


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
        self._manager: Manager | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.settings)
        return self._embedder

    @property
    def manager(self) -> Manager:
        if self._manager is None:
            dsn = self._dsn or resolve_dsn(self.settings)
            self._manager = Manager(dsn, self.settings.schema)
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
        return self.manager.insert_chunks(list(texts), metas)

    def search(
        self, query: str, k: int = 10, *, metadata_filter: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        """The k embedded rows nearest to ``query`` (cosine), best first."""
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be between 1 and {MAX_K}")
        if not query.strip():
            raise InvalidInput("the query is empty")
        vector = self.embed([query])[0]
        return self.manager.search(vector, k, metadata_filter=metadata_filter)

    def status(self) -> dict[str, Any]:
        return self.manager.status()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> Indexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
