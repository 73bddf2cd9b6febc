"""What a search returns: the rows nearest to a query, or the documents whose best
passage is (:meth:`indexer.store.Store.search`, :meth:`~indexer.store.Store.search_documents`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SearchHit:
    id: int
    score: float
    content: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class DocumentHit:
    """One document of a document search: its source and key, the score of its best
    passage, that passage (``content``, its ``position`` in the document from 0, and
    its span ``char_start``:``char_end`` in the document's text, 0-based characters),
    the passage's metadata, and the document's best ``passages`` (dicts of content,
    score, position, char_start, char_end), best first."""

    source: str
    key: str
    score: float
    content: str
    position: int
    char_start: int
    char_end: int
    metadata: dict[str, Any]
    passages: list[dict[str, Any]]
