"""Keeps text stored in PostgreSQL embedded (all-MiniLM-L6-v2 on ONNX Runtime) and
searchable with pgvector.  See README.md."""

from indexer.api import Indexer
from indexer.embedder import Embedder
from indexer.exceptions import IndexerError
from indexer.manager import SearchHit
from indexer.settings import Settings

__all__ = ["Embedder", "Indexer", "IndexerError", "SearchHit", "Settings"]
