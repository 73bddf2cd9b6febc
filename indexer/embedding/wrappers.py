"""Embedders that wrap another one: :class:`EmbedderWrapper` passes every call through,
:class:`CountingEmbedder` also records what reaches the model.

They live here, beside the embedder protocol, rather than in :mod:`indexer.testing`,
because ``indexer bench`` counts model inputs with :class:`CountingEmbedder` too: the
bench imports no test double, and ``indexer.testing`` builds its fakes on this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from indexer.embedding.tokens import TextEmbedder, Tokenized


class EmbedderWrapper:
    """An embedder that passes everything to ``inner``; subclasses change one thing."""

    def __init__(self, inner: TextEmbedder) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def cache_key(self) -> str:
        return self.inner.cache_key

    @property
    def dim(self) -> int:
        return self.inner.dim

    def tokenize(self, texts: Sequence[str], *, query: bool = False) -> Tokenized:
        return self.inner.tokenize(texts, query=query)

    def token_offsets(self, text: str) -> Sequence[tuple[int, int]]:
        return self.inner.token_offsets(text)

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        return self.inner.embed_tokenized(tokenized)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.embed_tokenized(self.tokenize(texts))

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.embed_tokenized(self.tokenize(texts, query=True))


class CountingEmbedder(EmbedderWrapper):
    """A real embedder that records the text of every model input (``texts``)."""

    def __init__(self, inner: TextEmbedder) -> None:
        super().__init__(inner)
        self.texts: list[str] = []

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        self.texts.extend(tokenized.texts)
        return self.inner.embed_tokenized(tokenized)
