"""The ONNX graph of an MPNet sentence encoder (all-mpnet-base-v2's architecture).

MPNet differs from BERT (:mod:`indexer.embedding.bert`) in three places, all mirrored
from Hugging Face's ``MPNetModel``:

* no token type embeddings;
* position ids as RoBERTa's: ``padding_idx + 1`` for the first token, counting only
  tokens that are not the padding id (a literal ``<pad>`` in a text keeps position
  ``padding_idx``, as in the reference);
* a relative position bias added to every layer's attention scores: the distance
  ``key - query`` falls into one of 32 buckets (exact up to 8, logarithmic up to 128,
  one bucket beyond; a sign bit splits them in half), and one table
  (``encoder.relative_attention_bias``, [buckets, heads]) shared by all layers gives
  each bucket a bias per head.

The bucket of every distance the position table allows is computed here, in numpy,
once (:func:`relative_position_buckets`); the graph only looks buckets up, so no
floating-point ``log`` at run time can land on the other side of a bucket edge.
Linear layers keep BERT's node names (``attention.qkv``, ``attention.output.dense``,
``intermediate.dense``, ``output.dense``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.embedding.graph import (
    AttentionWeights,
    Graph,
    Pooling,
    Tensors,
    additive_mask,
    feed_forward,
    graph_name,
    layer_norm,
    pool,
    read_dims,
    self_attention,
    serialise,
    shared_constants,
)
from indexer.exceptions import ModelNotFound

__all__ = [
    "GRAPH_VERSION",
    "build_onnx",
    "check_config",
    "max_positions",
    "relative_position_buckets",
]

#: Bumped whenever this builder changes what it makes of the same weights.
GRAPH_VERSION = 1
#: What Hugging Face's MPNet uses, whatever config.json says (its encoder calls the
#: bucket function with these defaults).
_BUCKETS = 32
_MAX_DISTANCE = 128
_PADDING_IDX = 1  # fixed in Hugging Face's MPNetEmbeddings, not read from the config


def check_config(config: Mapping[str, Any], where: str) -> None:
    """Refuse (:class:`ModelNotFound`) an MPNet ``config.json`` the builder does not lay
    out."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise ModelNotFound(f"{where}: hidden_act {config.get('hidden_act')!r} is not supported")
    buckets = config.get("relative_attention_num_buckets", _BUCKETS)
    if buckets != _BUCKETS:
        raise ModelNotFound(
            f"{where}: relative_attention_num_buckets is {buckets!r}; MPNet uses {_BUCKETS}"
        )
    if max_positions(config) < 2:
        raise ModelNotFound(f"{where}: max_position_embeddings is too small")


def max_positions(config: Mapping[str, Any]) -> int:
    """Tokens a text may have, <s>/</s> included: the table's rows after the padding
    row and the ones before it (514 rows hold 512 tokens)."""
    return int(config.get("max_position_embeddings", 514)) - _PADDING_IDX - 1


def relative_position_buckets(
    distances: npt.NDArray[np.int64], buckets: int = _BUCKETS, max_distance: int = _MAX_DISTANCE
) -> npt.NDArray[np.int64]:
    """The bucket of each relative distance (``key position - query position``).

    Hugging Face's ``MPNetEncoder.relative_position_bucket``: half of the buckets for
    each sign; in each half, exact buckets for distances below a quarter of the
    buckets, then logarithmic ones up to ``max_distance``, then the last one.
    """
    n = -np.asarray(distances, dtype=np.int64)
    half = buckets // 2
    result = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    scaled = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact))
    scaled = scaled / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    large = np.minimum(exact + scaled.astype(np.int64), half - 1)
    out: npt.NDArray[np.int64] = result + np.where(n < exact, n, large)
    return out


def build_onnx(
    tensors: Tensors,
    config: Mapping[str, Any],
    *,
    pooling: Pooling = "mean",
    normalize: bool = True,
) -> bytes:
    """Serialise an MPNet encoder + pooling (+ L2 normalisation) as an ONNX graph.

    ``tensors`` are the checkpoint's weights (HF ``MPNetModel`` names, an optional
    ``mpnet.`` prefix is stripped); ``config`` is its ``config.json``.  Byte-stable.
    """
    t = {k.removeprefix("mpnet."): v for k, v in tensors.items()}
    dims = read_dims(config)
    longest = max_positions(config)
    g = Graph()
    try:
        shared_constants(g, dims, pooling, normalize)
        x = _embeddings(g, t, dims.eps)
        mask, additive = additive_mask(g)
        bias = _position_bias(g, t, additive, longest)
        for i in range(dims.layers):
            p = f"encoder.layer.{i}"
            x = self_attention(g, t, p, x, bias, _attention_weights(t, p), dims)
            x = feed_forward(g, t, p, x, dims.eps)
    except KeyError as exc:
        raise ModelNotFound(f"model.safetensors lacks the tensor {exc}") from exc
    pool(g, x, mask, pooling, normalize)
    name = graph_name("mpnet", pooling, normalize)
    return serialise(g, name, dims.hidden, f"mpnet-graph-{GRAPH_VERSION}")


def _attention_weights(t: Tensors, p: str) -> AttentionWeights:
    def pair(name: str) -> tuple[Any, Any]:
        return t[f"{p}.attention.attn.{name}.weight"], t[f"{p}.attention.attn.{name}.bias"]

    return AttentionWeights(
        query=pair("q"),
        key=pair("k"),
        value=pair("v"),
        output=pair("o"),
        norm_prefix=f"{p}.attention",
    )


def _embeddings(g: Graph, t: Tensors, eps: float) -> str:
    """Word + position embeddings, layer-normalised.

    Position ids: a running count of the tokens that are neither the padding id nor
    padding added by the embedder (attention mask 0), plus ``padding_idx``; those
    two kinds keep ``padding_idx`` itself.
    """
    word_table = g.const(
        "embeddings.word_embeddings.weight", t["embeddings.word_embeddings.weight"]
    )
    pos_table = g.const(
        "embeddings.position_embeddings.weight", t["embeddings.position_embeddings.weight"]
    )
    pad = g.const("c.padding_idx", _PADDING_IDX, np.int64)
    axis = g.const("c.axis_1", 1, np.int64)
    is_pad = g.op("Equal", ["input_ids", pad], "positions.is_pad")
    real = g.op(
        "Cast", [g.op("Not", [is_pad], "positions.not_pad")], "positions.real", to=g.int_type
    )
    real = g.op("Mul", [real, "attention_mask"], "positions.counted")
    count = g.op("CumSum", [real, axis], "positions.running")
    ids = g.op("Add", [g.op("Mul", [count, real], "positions.kept"), pad], "positions.ids")
    words = g.op("Gather", [word_table, "input_ids"], "embeddings.words", axis=0)
    positions = g.op("Gather", [pos_table, ids], "embeddings.positions", axis=0)
    x = g.op("Add", [words, positions], "embeddings.sum")
    return layer_norm(g, x, "embeddings", t, eps)


def _position_bias(g: Graph, t: Tensors, additive: str, longest: int) -> str:
    """The relative position bias [1, heads, seq, seq] plus the padding mask
    [batch, 1, 1, seq]: one tensor the layers add to their scores.

    Adding the two once instead of in every layer changes nothing: for a token the
    mask is exactly 0, and a padded key's score is -1e9 either way.
    """
    table = g.const(
        "encoder.relative_attention_bias.weight", t["encoder.relative_attention_bias.weight"]
    )
    # Bucket of every distance -(longest-1) .. longest-1, indexed by distance + longest-1.
    distances = np.arange(-(longest - 1), longest, dtype=np.int64)
    buckets = g.const("c.relative_buckets", relative_position_buckets(distances), np.int64)
    offset = g.const("c.distance_offset", longest - 1, np.int64)
    shape = g.op("Shape", ["input_ids"], "bias.input_shape")
    seq_len = g.op(
        "Squeeze",
        [g.op("Slice", [shape, "c.one_1d", "c.two_1d"], "bias.seq_len_1d")],
        "bias.seq_len",
    )
    steps = g.op(
        "Range",
        [g.scalar("c.zero_i", 0), seq_len, g.scalar("c.one_i", 1)],
        "bias.positions",
    )
    keys = g.op("Unsqueeze", [steps, "c.zero_1d"], "bias.keys")
    queries = g.op("Unsqueeze", [steps, "c.one_1d"], "bias.queries")
    distance = g.op("Sub", [keys, queries], "bias.distance")
    index = g.op("Add", [distance, offset], "bias.index")
    bucket = g.op("Gather", [buckets, index], "bias.bucket", axis=0)
    values = g.op("Gather", [table, bucket], "bias.values", axis=0)  # [seq, seq, heads]
    values = g.op("Transpose", [values], "bias.by_head", perm=[2, 0, 1])
    values = g.op("Unsqueeze", [values, "c.zero_1d"], "bias.batched")
    return g.op("Add", [values, additive], "bias.masked")
