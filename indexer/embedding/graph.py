"""What the ONNX graph builders share: deterministic graph assembly and the encoder parts
BERT and MPNet have in common.

:mod:`indexer.embedding.bert` and :mod:`indexer.embedding.mpnet` lay a checkpoint's
weights out as an ONNX graph with these pieces.  The graph contract (what
:mod:`indexer.embedding.session` runs, and what a user-supplied ``model.onnx`` must
follow):

* inputs ``input_ids`` and ``attention_mask``: int64 ``[batch, sequence]``
  (an optional ``token_type_ids`` input of the same shape is fed zeros);
* output ``sentence_embedding``: float32 ``[batch, dim]``, already pooled (and
  L2-normalised if the model's description says so).  A graph exported by other
  tools whose first output is a plain ``last_hidden_state`` float32
  ``[batch, sequence, dim]`` is also accepted: the session then pools and normalises
  in numpy, as the model's description says.

Graphs built here are byte-stable: node names carry a running number, initializers
are added in a fixed order, and nothing records a time or a path, so the same weights
always give the same bytes (and a sha256 that can be pinned).  Names follow the
checkpoint's (``encoder.layer.3.attention.qkv.mm``): the int8 recipe
(:mod:`indexer.embedding.quantize`) picks MatMuls by them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from indexer.exceptions import ModelNotFound

__all__ = [
    "OUTPUT",
    "POOLINGS",
    "AttentionWeights",
    "Dims",
    "Graph",
    "Pooling",
    "Tensors",
    "additive_mask",
    "feed_forward",
    "graph_name",
    "layer_norm",
    "linear",
    "pool",
    "read_dims",
    "self_attention",
    "serialise",
    "shared_constants",
]

Tensors = Mapping[str, npt.NDArray[Any]]
Pooling = Literal["mean", "cls"]
#: The poolings the builders (and the session, for a ``last_hidden_state`` graph) apply.
POOLINGS: tuple[Pooling, ...] = ("mean", "cls")

_OPSET = 17
_IR_VERSION = 8  # the IR version that goes with opset 17; ONNX Runtime >= 1.10 reads it
MASK_NEGATIVE = -1.0e9  # added to attention scores of padded positions
OUTPUT = "sentence_embedding"


@dataclass(frozen=True)
class Dims:
    hidden: int
    heads: int
    layers: int
    eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def read_dims(config: Mapping[str, Any]) -> Dims:
    """The encoder's sizes from its ``config.json``; one line if one is missing."""
    try:
        dims = Dims(
            hidden=int(config["hidden_size"]),
            heads=int(config["num_attention_heads"]),
            layers=int(config["num_hidden_layers"]),
            eps=float(config.get("layer_norm_eps", 1e-12)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelNotFound(f"config.json lacks a usable {exc} entry") from exc
    if dims.heads < 1 or dims.hidden % dims.heads:
        raise ModelNotFound("config.json: hidden_size is not a multiple of num_attention_heads")
    return dims


class Graph:
    """Collects nodes and initializers with deterministic, sequential names.

    Node names carry a running number, so the order in which a builder adds nodes
    is part of the graph's bytes (and of a pinned sha256).
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
        """An initializer; a scalar ``value`` becomes a one-element 1-d tensor (which
        broadcasts as a scalar does; the pinned graph's constants are so)."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def scalar(self, name: str, value: int) -> str:
        """A 0-d int64 initializer, for the inputs that must be scalars (Range's, an
        index that drops its axis)."""
        self.initializers.append(self.numpy_helper.from_array(np.array(value, np.int64), name))
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


def shared_constants(g: Graph, dims: Dims, pooling: Pooling, normalize: bool) -> None:
    """The small constants every encoder graph uses, added first (in a fixed order)."""
    i64 = np.int64
    g.const("c.zero_1d", [0], i64)
    g.const("c.one_1d", [1], i64)
    g.const("c.two_1d", [2], i64)
    if pooling == "mean":
        g.const("c.axes_1", [1], i64)
        g.const("c.axes_2", [2], i64)
    g.const("c.axes_1_2", [1, 2], i64)
    g.const("c.one", 1.0)
    g.const("c.mask_negative", MASK_NEGATIVE)
    g.const("c.split_qkv", [dims.hidden, dims.hidden, dims.hidden], i64)
    g.const("c.heads_shape", [0, 0, dims.heads, dims.head_dim], i64)
    g.const("c.hidden_shape", [0, 0, dims.hidden], i64)
    g.const("c.sqrt2", np.sqrt(2.0))
    g.const("c.half", 0.5)
    # Only what the pooling uses (here and above): ONNX Runtime warns of an unused one.
    if pooling == "mean":
        g.const("c.min_count", 1e-9)
    if normalize:
        g.const("c.min_norm", 1e-12)
    if pooling == "cls":
        g.scalar("c.zero", 0)


def additive_mask(g: Graph) -> tuple[str, str]:
    """The float mask, and the additive one [batch, 1, 1, seq]: 0 for tokens, large
    negative for padding, so padded positions get no attention."""
    mask = g.op("Cast", ["attention_mask"], "mask.float", to=g.float_type)
    inverted = g.op("Sub", ["c.one", mask], "mask.inverted")
    additive = g.op("Mul", [inverted, "c.mask_negative"], "mask.additive")
    additive = g.op("Unsqueeze", [additive, "c.axes_1_2"], "mask.additive_4d")
    return mask, additive


@dataclass(frozen=True)
class AttentionWeights:
    """One layer's attention weights in PyTorch's [out, in] layout, and the prefix of
    its LayerNorm (``<prefix>.LayerNorm.weight``)."""

    query: tuple[Any, Any]
    key: tuple[Any, Any]
    value: tuple[Any, Any]
    output: tuple[Any, Any]
    norm_prefix: str


def self_attention(
    g: Graph, t: Tensors, p: str, x: str, scores_bias: str, w: AttentionWeights, dims: Dims
) -> str:
    """One layer's attention block, residual and layer norm included.

    ``scores_bias`` is added to the scaled scores before the softmax: the additive
    padding mask, or (MPNet) the relative position bias with that mask already in it.
    """
    # Q, K and V in one MatMul; the 1/sqrt(head_dim) score scale is folded into Q.
    scale = 1.0 / np.sqrt(float(dims.head_dim))
    qkv_w = np.concatenate([w.query[0].astype(np.float64) * scale, w.key[0], w.value[0]])
    qkv_b = np.concatenate([w.query[1].astype(np.float64) * scale, w.key[1], w.value[1]])
    qkv = linear(g, x, f"{p}.attention.qkv", qkv_w, qkv_b)
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
    scores = g.op("Add", [scores, scores_bias], f"{p}.scores_masked")
    probs = g.op("Softmax", [scores], f"{p}.probs", axis=-1)
    ctx = g.op("MatMul", [probs, v], f"{p}.context")
    ctx = g.op("Transpose", [ctx], f"{p}.context_t", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, "c.hidden_shape"], f"{p}.context_merged")
    attn = linear(g, ctx, f"{p}.attention.output.dense", *w.output)
    residual = g.op("Add", [attn, x], f"{p}.attention.residual")
    return layer_norm(g, residual, w.norm_prefix, t, dims.eps)


def feed_forward(g: Graph, t: Tensors, p: str, x: str, eps: float) -> str:
    """One layer's feed-forward block, residual and layer norm included (the same
    weight names in BERT and MPNet)."""
    inter = linear(
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
    out = linear(
        g, gelu, f"{p}.output.dense", t[f"{p}.output.dense.weight"], t[f"{p}.output.dense.bias"]
    )
    residual = g.op("Add", [out, x], f"{p}.output.residual")
    return layer_norm(g, residual, f"{p}.output", t, eps)


def pool(g: Graph, x: str, mask: str, pooling: Pooling, normalize: bool) -> None:
    """The ``sentence_embedding`` output, as sentence-transformers computes it: the mean
    over the attention mask or the first token's state, then (if ``normalize``) L2
    normalisation."""
    if pooling == "mean":
        mask3 = g.op("Unsqueeze", [mask, "c.axes_2"], "pool.mask")
        masked = g.op("Mul", [x, mask3], "pool.masked")
        summed = g.op("ReduceSum", [masked, "c.axes_1"], "pool.sum", keepdims=0)
        count = g.op("ReduceSum", [mask3, "c.axes_1"], "pool.count", keepdims=0)
        count = g.op("Max", [count, "c.min_count"], "pool.count_clamped")
        pooled = g.op("Div", [summed, count], "pool.mean" if normalize else OUTPUT)
    else:
        pooled = g.op("Gather", [x, "c.zero"], "pool.cls" if normalize else OUTPUT, axis=1)
    if normalize:
        norm = g.op("ReduceL2", [pooled], "norm.l2", axes=[1], keepdims=1)
        norm = g.op("Max", [norm, "c.min_norm"], "norm.clamped")
        g.op("Div", [pooled, norm], OUTPUT)


def layer_norm(g: Graph, x: str, prefix: str, t: Tensors, eps: float) -> str:
    gamma = g.const(f"{prefix}.LayerNorm.weight", t[f"{prefix}.LayerNorm.weight"])
    beta = g.const(f"{prefix}.LayerNorm.bias", t[f"{prefix}.LayerNorm.bias"])
    return g.op("LayerNormalization", [x, gamma, beta], f"{prefix}.ln", axis=-1, epsilon=float(eps))


def linear(g: Graph, x: str, name: str, weight: Any, bias: Any) -> str:
    """x @ weight.T + bias (``weight`` in PyTorch's [out, in] layout)."""
    w = g.const(f"{name}.w", np.asarray(weight, dtype=np.float32).T)
    b = g.const(f"{name}.b", bias)
    return g.op("Add", [g.op("MatMul", [x, w], f"{name}.mm"), b], f"{name}.out")


def serialise(g: Graph, graph_name: str, hidden: int, producer_version: str) -> bytes:
    """The model's bytes, deterministic for a deterministic graph."""
    h = g.helper
    graph = h.make_graph(
        g.nodes,
        graph_name,
        [
            h.make_tensor_value_info("input_ids", g.int_type, ["batch", "sequence"]),
            h.make_tensor_value_info("attention_mask", g.int_type, ["batch", "sequence"]),
        ],
        [h.make_tensor_value_info(OUTPUT, g.float_type, ["batch", hidden])],
        initializer=g.initializers,
    )
    model = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", _OPSET)],
        producer_name="indexer",
        producer_version=producer_version,
    )
    model.ir_version = _IR_VERSION
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def graph_name(architecture: str, pooling: Pooling, normalize: bool) -> str:
    """``bert_mean_pooling_l2`` and the like: what the graph computes, for people."""
    return f"{architecture}_{pooling}_pooling" + ("_l2" if normalize else "")
