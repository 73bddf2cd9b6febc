"""Keeps text stored in PostgreSQL embedded (all-MiniLM-L6-v2 on ONNX Runtime) and
searchable with pgvector.  See README.md."""

from indexer.app import Indexer
from indexer.embedding import Embedder
from indexer.exceptions import IndexerError
from indexer.settings import Settings
from indexer.store import SearchHit

__all__ = ["Embedder", "Indexer", "IndexerError", "SearchHit", "Settings"]
