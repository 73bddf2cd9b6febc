"""Text -> vectors: all-MiniLM-L6-v2 (or another described model) on ONNX Runtime, with
no database involved.

``import indexer.embedding`` loads neither psycopg nor SQLAlchemy nor Alembic: a user
who only embeds pays for none of the database layer.  A model goes to vectors in four
steps, one module each:

1. describe: :mod:`~indexer.embedding.describe` makes a folder (or the packaged model)
   a frozen :class:`ModelRecord` with its fingerprint (reading a sentence-transformers
   folder's configs with :mod:`~indexer.embedding.st_config`);
2. locate and 3. convert: :mod:`~indexer.embedding.resolve` finds the record's files,
   checks them against it, and builds its ONNX graph once into the model cache
   (:mod:`~indexer.embedding.cache`), with the builder
   :mod:`~indexer.embedding.architectures` picks: :mod:`~indexer.embedding.bert` or
   :mod:`~indexer.embedding.mpnet` (on :mod:`~indexer.embedding.graph`, from weights
   :mod:`~indexer.embedding.safetensors` reads), and :mod:`~indexer.embedding.quantize`
   for the int8 variant (its graph rewritten by :mod:`~indexer.embedding.pertoken`,
   calibrated by :mod:`~indexer.embedding.calibrate`);
4. open: the :class:`Embedder` (:mod:`~indexer.embedding.embedder`) runs the graph in a
   :mod:`~indexer.embedding.session` and plans model calls with
   :mod:`~indexer.embedding.tokens`.

:mod:`~indexer.embedding.wrappers` holds embedders around another (the bench's and the
tests' input counter); :mod:`~indexer.embedding.remote` an embedder whose model runs on
a server with an OpenAI-compatible ``/v1/embeddings`` API (with
:mod:`~indexer.embedding.remote_config` and :mod:`~indexer.embedding.remote_answers`;
imported on their own, so that ``import indexer.embedding`` does not load an HTTP
client).
"""

from __future__ import annotations

from indexer.embedding.describe import ModelRecord, describe_folder, describe_packaged
from indexer.embedding.embedder import Embedder, load_embedder, load_query_embedder
from indexer.embedding.tokens import TextEmbedder, Tokenized, plan_calls, shortest_first

__all__ = [
    "Embedder",
    "ModelRecord",
    "TextEmbedder",
    "Tokenized",
    "describe_folder",
    "describe_packaged",
    "load_embedder",
    "load_query_embedder",
    "plan_calls",
    "shortest_first",
]
