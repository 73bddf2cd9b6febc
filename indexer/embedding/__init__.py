"""Text -> vectors: all-MiniLM-L6-v2 on ONNX Runtime, with no database involved.

``import indexer.embedding`` loads neither psycopg nor SQLAlchemy nor Alembic: a user
who only embeds pays for none of the database layer.  Its modules, by job:
:mod:`~indexer.embedding.resolve` (which files to load), :mod:`~indexer.embedding.cache`
(built graphs, verified and written atomically), :mod:`~indexer.embedding.safetensors`
and :mod:`~indexer.embedding.bert` (weights -> ONNX graph),
:mod:`~indexer.embedding.quantize` (the int8 variant), :mod:`~indexer.embedding.session`
(the ONNX Runtime session), :mod:`~indexer.embedding.tokens` (model-call planning),
:mod:`~indexer.embedding.embedder` (the :class:`Embedder` that ties them together) and
:mod:`~indexer.embedding.wrappers` (embedders around another: the bench's and the tests'
input counter).
"""

from __future__ import annotations

from indexer.embedding.embedder import Embedder, load_embedder
from indexer.embedding.tokens import TextEmbedder, Tokenized, plan_calls, shortest_first

__all__ = ["Embedder", "TextEmbedder", "Tokenized", "load_embedder", "plan_calls", "shortest_first"]
