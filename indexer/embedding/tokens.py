"""Tokens and model calls: what the model reads, and how texts are grouped for it.

Words used across the package: a **claim** is the rows one daemon leases in one
statement; a **batch** is the rows written together (one write, one ``events`` row);
a **model call** is one run of the ONNX graph, whose padded size the token budget
bounds.  This module plans model calls; the worker cuts claims into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Tokenized:
    """Texts after tokenization (truncated, [CLS]/[SEP] included), ready for the model.

    The daemon tokenizes a whole claim once, sorts it by :attr:`lengths` and embeds it
    in slices (:meth:`select`), so no text is tokenized twice.
    """

    texts: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]

    @property
    def lengths(self) -> list[int]:
        return [len(i) for i in self.ids]

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> Tokenized:
        """The texts at ``indices``, in that order."""
        return Tokenized(tuple(self.texts[i] for i in indices), tuple(self.ids[i] for i in indices))

    def by_length(self) -> list[int]:
        """Indices shortest first (ties keep input order)."""
        return shortest_first(self.lengths)


def shortest_first(lengths: Sequence[int]) -> list[int]:
    """Indices of ``lengths`` in increasing order of length (a stable sort).

    The one place the package sorts by length: the model pads every text of a call to
    the longest one, so texts of nearly equal length belong together.
    """
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def plan_calls(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group indices into model calls whose padded size stays within ``token_budget``.

    Indices are taken shortest first; a call grows while ``texts * longest length in
    it <= token_budget``.  A single text longer than the budget still gets a call of
    its own, so every index appears exactly once.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be positive, not {token_budget}")
    calls: list[list[int]] = []
    current: list[int] = []
    for index in shortest_first(lengths):
        # Ascending order: the new text is the longest of the call it joins.
        if current and (len(current) + 1) * lengths[index] > token_budget:
            calls.append(current)
            current = []
        current.append(index)
    if current:
        calls.append(current)
    return calls


class TextEmbedder(Protocol):
    """What the worker and the HTTP API need of an embedder (:class:`Embedder` is one;
    tests wrap it to inject failures)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def cache_key(self) -> str:
        """Identifies the input -> vector mapping (model, variant, truncation): vectors
        are shared through the vector cache only between equal keys."""
        ...

    def tokenize(self, texts: Sequence[str], *, query: bool = False) -> Tokenized:
        """Texts as the model reads them: as documents, or as queries (``query``),
        each after the model's prefix for that kind."""
        ...

    def token_offsets(self, text: str) -> Sequence[tuple[int, int]]:
        """Character spans of a text's content tokens, untruncated (for chunking)."""
        ...

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of documents (what the daemon writes)."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of search queries (with the model's query prefix, if it has one)."""
        ...
