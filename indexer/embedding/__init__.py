"""Text -> vectors: all-MiniLM-L6-v2 on ONNX Runtime, with no database involved.

``import indexer.embedding`` loads neither psycopg nor SQLAlchemy nor Alembic: a user
who only embeds pays for none of the database layer.
"""

from __future__ import annotations

from indexer.embedding.embedder import Embedder, load_embedder
from indexer.embedding.tokens import TextEmbedder, Tokenized, plan_calls, shortest_first

__all__ = ["Embedder", "TextEmbedder", "Tokenized", "load_embedder", "plan_calls", "shortest_first"]
