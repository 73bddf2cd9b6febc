"""Keeps text stored in PostgreSQL embedded (all-MiniLM-L6-v2 on ONNX Runtime) and
searchable with pgvector.  See README.md.

The names below load on first use, so ``from indexer import Embedder`` pays for the
model's runtime only, and ``from indexer import Indexer`` adds the database layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.app import Indexer
    from indexer.embedding import Embedder
    from indexer.exceptions import IndexerError
    from indexer.settings import Settings
    from indexer.store import DocumentHit, SearchHit

__all__ = ["DocumentHit", "Embedder", "Indexer", "IndexerError", "SearchHit", "Settings"]

_HOMES = {
    "DocumentHit": "indexer.store",
    "Embedder": "indexer.embedding",
    "Indexer": "indexer.app",
    "IndexerError": "indexer.exceptions",
    "SearchHit": "indexer.store",
    "Settings": "indexer.settings",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
