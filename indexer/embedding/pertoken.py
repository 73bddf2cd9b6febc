"""The int8 graph: per-token activation scales, and sums that padding cannot change.

:mod:`indexer.embedding.quantize` decides which MatMuls of the fp32 graph become int8 and
how; this module rewrites the graph accordingly.  The property it is built for: a text
gets the **same vector, bit for bit**, whether it is embedded alone or inside any model
call, padded to any longer text.  Three things make that hold:

* **One scale per token.**  Each quantized MatMul's input gets, row by row (token by
  token), its own scale from that row's own range: ``ReduceMax``/``ReduceMin`` over
  the channels, then ``QuantizeLinear`` with one block per row (opset 21).  No row's
  scale depends on another text, nor on padding (a padded row only quantizes itself).
* **Integer products are exact.**  ``MatMulIntegerToFloat`` (ONNX Runtime's contrib op)
  multiplies uint8 activations by int8 weights with int32 accumulation, which is
  exact whatever the kernel's blocking, then applies the per-column weight scale and
  the per-row activation scale (the row scale is a broadcast ``[.., 1]`` tensor, which
  ONNX Runtime applies after the GEMM).  ``MatMulInteger`` itself takes only one
  activation zero point per call, hence the zero points below.
* **Sums over positions add one position after another.**  ONNX Runtime's
  ``ReduceSum`` over the sequence axis (mean pooling) vectorises differently for a
  batch padded to 256 tokens than for one text of 19 (measured: the pooled sum moved by
  up to 2.3e-5, the vector by 3e-8); ``CumSum`` adds positions in order, and padded
  positions (masked to exact zeros) come after the last real one, so the last element
  of the cumulative sum is the same number either way.  The L2 norm (of a normalised
  model) is made the same way; CLS pooling reads one position and needs nothing.
  Everything else in the graph (embeddings, layer norm, GELU, softmax over masked
  scores, the fp32 attention MatMuls) was measured to give bit-identical rows alone
  and in padded batches already.

Activations, per kind of input:

* fed by a layer norm (Q/K/V, FFN input), or the attention context: **symmetric**,
  scale ``max|x| / 127``, stored as uint8 with zero point 128, because ONNX Runtime's
  fast integer kernel is uint8 x int8 (``vpdpbusd`` on AVX-512 VNNI: 4.1x its fp32
  GEMM here; int8 x int8 ran at 0.18x) and takes a single activation zero point;
* fed by GELU (FFN output): GELU never goes below -0.16997, so a fixed zero point
  ``z`` (16) and scale ``max(x) / (255 - z)``, floored at ``0.17 / z`` so the
  negative side always fits: nearly 8 bits for the positive side where the symmetric
  scheme gives it 7.

Weights are int8, symmetric, one scale per output column.  Inputs fed by a layer norm
can be **smoothed** (SmoothQuant): channel ``k`` divided by a power of two ``s_k``
(in a second layer norm with ``gamma / s`` and ``beta / s``, since the first one's
output is also the residual) and weight row ``k`` multiplied by it, so that the few
channels that run large no longer set every token's scale alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.exceptions import ModelNotFound

__all__ = [
    "GELU_FLOOR",
    "SYMMETRIC_ZERO_POINT",
    "Linear",
    "check_pooling",
    "quantize_weight",
    "rewrite",
    "smoothing_factors",
]

#: GELU's minimum, x * Phi(x) at x = -0.7518, is -0.169971; rounded up.
GELU_FLOOR = 0.17
#: The uint8 zero point of symmetric activations (int8 values shifted by 128).
SYMMETRIC_ZERO_POINT = 128
#: Blocked QuantizeLinear (one scale per row) needs opset 21, hence IR version 10.
_OPSET, _IR_VERSION = 21, 10
_CONTRIB = "com.microsoft"
#: The smallest activation range: a row of zeros still gets a finite, normal scale.
_MIN_RANGE = 1e-12
#: The pooling nodes of :mod:`indexer.embedding.bert` replaced by ordered sums.
_POOLED_SUM, _NORM = "pool.sum", "norm.l2"

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Linear:
    """One MatMul to quantize: its node name, how its input is quantized.

    ``zero_point`` is :data:`SYMMETRIC_ZERO_POINT`, or a GELU-fed input's fixed zero
    point; ``smoothing`` the per-input-channel divisors (powers of two) or None.
    """

    node: str
    zero_point: int = SYMMETRIC_ZERO_POINT
    smoothing: Floats | None = None


def smoothing_factors(channel_max: Floats, weight: Floats, alpha: float) -> Floats:
    """SmoothQuant's ``max|x_k|^alpha / max|w_k|^(1 - alpha)``, as powers of two.

    ``weight`` is ``[in, out]``.  The factors are normalised to a geometric mean of 1
    (only their ratios matter: the scales absorb the rest) and rounded to powers of two,
    so dividing and multiplying by them is exact in floating point.
    """
    w_max = np.abs(weight).max(axis=1)
    raw = np.maximum(channel_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1.0 - alpha)
    raw = raw / np.exp(np.mean(np.log(raw)))
    factors: Floats = 2.0 ** np.round(np.log2(raw))
    return factors


def quantize_weight(weight: Floats) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Symmetric int8 per output column of ``weight`` ``[in, out]``: values and scales."""
    scale = (np.abs(weight).max(axis=0) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    values = np.clip(np.rint(weight / scale.astype(np.float64)), -127, 127).astype(np.int8)
    return values, scale


class _Rewriter:
    """The new node list and constants, with deterministic names."""

    def __init__(self, model: Any) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.model = model
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producers = {o: n for n in model.graph.node for o in n.output}
        self.added: dict[str, Any] = {}
        self.nodes: list[Any] = []

    def array(self, name: str) -> Floats:
        tensor = self.initializers.get(name)
        if tensor is None:
            raise ModelNotFound(f"{name} is not a constant of the graph")
        return np.asarray(self.numpy_helper.to_array(tensor), dtype=np.float64)

    def const(self, name: str, value: npt.ArrayLike, dtype: npt.DTypeLike) -> str:
        if name not in self.added:
            array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
            self.added[name] = self.numpy_helper.from_array(array, name)
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        domain = _CONTRIB if op_type == "MatMulIntegerToFloat" else ""
        node = self.helper.make_node(op_type, inputs, [output], name=output, domain=domain, **attrs)
        self.nodes.append(node)
        return output


def _smoothed_input(rw: _Rewriter, x: str, factors: Floats, prefix: str) -> str:
    """``x / factors`` per channel, as a second copy of the layer norm that made ``x``."""
    norm = rw.producers.get(x)
    if norm is None or norm.op_type != "LayerNormalization" or len(norm.input) != 3:
        raise ModelNotFound(f"{x} is not the output of a LayerNormalization to smooth")
    gamma = rw.const(f"{prefix}.smooth_gamma", rw.array(norm.input[1]) / factors, np.float32)
    beta = rw.const(f"{prefix}.smooth_beta", rw.array(norm.input[2]) / factors, np.float32)
    attrs = {a.name: rw.helper.get_attribute_value(a) for a in norm.attribute}
    return rw.op("LayerNormalization", [norm.input[0], gamma, beta], f"{prefix}.smoothed", **attrs)


def _row_scale(rw: _Rewriter, x: str, zero_point: int, prefix: str) -> str:
    """Each row's own scale ``[.., 1]``: symmetric, or GELU's fixed zero point."""
    axes = rw.const("q.axes_last", [-1], np.int64)
    row_max = rw.op("ReduceMax", [x, axes], f"{prefix}.row_max", keepdims=1)
    if zero_point == SYMMETRIC_ZERO_POINT:
        row_min = rw.op("ReduceMin", [x, axes], f"{prefix}.row_min", keepdims=1)
        neg = rw.op("Neg", [row_min], f"{prefix}.row_neg")
        floor = rw.const("q.min_range", _MIN_RANGE, np.float32)
        amax = rw.op("Max", [row_max, neg, floor], f"{prefix}.row_range")
        return rw.op("Mul", [amax, rw.const("q.inv_127", 1 / 127, np.float32)], f"{prefix}.scale")
    steps = 255 - zero_point
    scaled = rw.op(
        "Mul", [row_max, rw.const(f"q.inv_{steps}", 1 / steps, np.float32)], f"{prefix}.scale0"
    )
    floor = rw.const(f"q.gelu_floor_{zero_point}", GELU_FLOOR / zero_point, np.float32)
    return rw.op("Max", [scaled, floor], f"{prefix}.scale")


def _quantized_linear(rw: _Rewriter, node: Any, linear: Linear) -> None:
    """Replace ``x @ W`` (``node``) by its per-token int8 form, same output name."""
    x, weight_name = node.input
    weight = rw.array(weight_name)
    prefix = node.name
    if linear.smoothing is not None:
        x = _smoothed_input(rw, x, linear.smoothing, prefix)
        weight = weight * linear.smoothing[:, None]
    values, scales = quantize_weight(weight)
    zero_point = rw.const(f"q.zero_point_{linear.zero_point}", linear.zero_point, np.uint8)
    scale = _row_scale(rw, x, linear.zero_point, prefix)
    shape = rw.op("Shape", [scale], f"{prefix}.scale_shape")
    zero_points = rw.op("Expand", [zero_point, shape], f"{prefix}.zero_points")
    quantized = rw.op(
        "QuantizeLinear",
        [x, scale, zero_points],
        f"{prefix}.quantized",
        axis=-1,
        block_size=int(weight.shape[0]),
    )
    rw.op(
        "MatMulIntegerToFloat",
        [
            quantized,
            rw.const(f"{prefix}.weight_int8", values, np.int8),
            scale,
            rw.const(f"{prefix}.weight_scale", scales, np.float32),
            zero_point,
        ],
        node.output[0],
    )


def _ordered_sum(rw: _Rewriter, x: str, axis: int, prefix: str) -> str:
    """The sum of ``x`` along ``axis`` (kept, size 1), adding one element after another."""
    axis_name = rw.const(f"q.axis_{axis}", axis, np.int64)
    running = rw.op("CumSum", [x, axis_name], f"{prefix}.cumsum")
    return rw.op(
        "Slice",
        [
            running,
            rw.const("q.last_start", [-1], np.int64),
            rw.const("q.last_end", [np.iinfo(np.int64).max], np.int64),
            rw.const(f"q.axes_{axis}", [axis], np.int64),
        ],
        f"{prefix}.last",
    )


def _pooled_sum(rw: _Rewriter, node: Any) -> None:
    """``ReduceSum`` over the sequence axis of the masked hidden states, in order."""
    total = _ordered_sum(rw, node.input[0], 1, "q.pool")
    rw.op("Squeeze", [total, rw.const("q.axes_1", [1], np.int64)], node.output[0])


def _l2_norm(rw: _Rewriter, node: Any) -> None:
    """``ReduceL2`` over the channels, kept dims, the squares added in order."""
    squares = rw.op("Mul", [node.input[0], node.input[0]], "q.norm.squares")
    rw.op("Sqrt", [_ordered_sum(rw, squares, 1, "q.norm")], node.output[0])


def check_pooling(model: Any) -> None:
    """Raise :class:`ModelNotFound` for a graph that sums over positions or channels
    other than where the builders of :mod:`indexer.embedding.graph` do (the rewrite
    would leave such a sum to vary with padding)."""
    for node in model.graph.node:
        if node.op_type.startswith("Reduce") and node.op_type not in ("ReduceSum", "ReduceL2"):
            raise ModelNotFound(f"the graph reduces with {node.op_type}: not a graph we built")
        if node.op_type == "ReduceL2" and node.output[0] != _NORM:
            raise ModelNotFound(f"the graph's {node.output[0]} is not the builder's norm")


def rewrite(model: Any, linears: Sequence[Linear]) -> bytes:
    """The serialised int8 graph: ``model`` (fp32, from :mod:`indexer.embedding.graph`'s
    builders) with every MatMul of ``linears`` quantized per token, and its pooled sum
    and norm (if it has them) summed in order.

    Raises :class:`ModelNotFound` for a graph whose reductions are not the builders'.
    Byte-stable: the same inputs give the same bytes.
    """
    check_pooling(model)
    rw = _Rewriter(model)
    by_node = {linear.node: linear for linear in linears}
    for node in model.graph.node:
        if node.name in by_node and node.op_type == "MatMul":
            _quantized_linear(rw, node, by_node[node.name])
        elif node.output[0] == _POOLED_SUM and node.op_type == "ReduceSum":
            _pooled_sum(rw, node)
        elif node.output[0] == _NORM and node.op_type == "ReduceL2":
            _l2_norm(rw, node)
        else:
            rw.nodes.append(node)
    return _serialise(rw)


def _serialise(rw: _Rewriter) -> bytes:
    graph = rw.model.graph
    used = {name for node in rw.nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    new = [rw.added[name] for name in sorted(rw.added) if name in used]
    out = rw.helper.make_graph(
        rw.nodes, graph.name, list(graph.input), list(graph.output), initializer=kept + new
    )
    h = rw.helper
    model = h.make_model(
        out,
        opset_imports=[h.make_opsetid("", _OPSET), h.make_opsetid(_CONTRIB, 1)],
        producer_name=rw.model.producer_name,
        producer_version=rw.model.producer_version,
    )
    model.ir_version = _IR_VERSION
    data: bytes = model.SerializeToString(deterministic=True)
    return data
