"""The int8 variant of the converted graph: per-token scales, the same vector in any batch.

The fp32 graph that :mod:`indexer.embedding.bert` builds is rewritten once by
:mod:`indexer.embedding.pertoken` and cached beside it.  Weights become int8 ahead of
time (one scale per output column); activations are quantized at run time with **one
scale per token**, computed from that token's own values.  So a text's int8 vector
depends on nothing but the text: embedded alone or inside any model call, padded to
any longer text, it is the same to the last bit, as fp32 vectors are not quite (their
pooled sums moved by up to 3e-8 with padding; the int8 graph sums in order, see
:mod:`indexer.embedding.pertoken`).  The variant this replaced quantized each model
call's activations with one scale for the whole call, so a text's vector moved with
its neighbours (cosine down to 0.985 between the same text alone and in a batch).

Choices, and why (figures: ``benchmarks/int8_quality.py``, on its bench corpus of 2,456
texts and on the man-page quality corpus, 2 cores of an Intel Xeon with AVX-512 VNNI;
speeds are ratios to fp32 on ~1 KB chunks, wall clock / one thread's CPU time):

* **Per-token activation scales** cost passes over the activations that the per-call
  scheme fused into its GEMM (each row's range, row-wise quantization, the output
  scaled by the row scale), but its integer GEMM runs at 4.1x fp32's GEMM here:
  1.81x / 2.01x end to end, where the per-call variant ran at 1.42x / 1.50x.
* **Smoothing** (:attr:`Recipe.smoothing_alpha`) of the MatMuls fed by a layer norm
  (Q/K/V, FFN input): without it the lowest cosine to fp32 was 0.9937 with all 24
  MatMuls in int8, and reaching 0.9959 took three of them back to fp32 (1.66x); with
  it, 0.9973 with all 24 in int8, for 3% of the speed.  The channel ranges come from
  :mod:`indexer.embedding.calibrate` (random token ids, fixed seed: no corpus).
* **GELU-fed inputs** (FFN output) use a fixed zero point
  (:attr:`Recipe.gelu_zero_point`) instead of a symmetric range: GELU is never below
  -0.17, so nearly all 8 bits go to its positive side (median cosine 0.99905 instead
  of 0.99878).

The cache file name carries the fp32 graph's sha256, the recipe's fingerprint and
:data:`QUANT_VERSION`, so a changed fp32 graph, recipe or scheme never reuses a stale
file (version 1 was the per-call scheme, built by ONNX Runtime's own quantizer).  The
bytes for the packaged model are pinned (:data:`PACKAGED_INT8_SHA256`); others are
checked against a sidecar hash, as for fp32 graphs (both go through
:mod:`indexer.embedding.cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.embedding.bert import PACKAGED_ONNX_SHA256
from indexer.embedding.cache import cached_build, cached_path, ensure_cache_dir, read_source
from indexer.embedding.calibrate import channel_maxima
from indexer.embedding.pertoken import (
    SYMMETRIC_ZERO_POINT,
    Linear,
    check_pooling,
    rewrite,
    smoothing_factors,
)
from indexer.exceptions import ConfigurationError, ModelNotFound, first_line

__all__ = [
    "LINEAR_KINDS",
    "PACKAGED_INT8_ONNXRUNTIME",
    "PACKAGED_INT8_SHA256",
    "QUANT_VERSION",
    "SHIPPED_RECIPE",
    "Recipe",
    "quantize_bytes",
    "quantized_onnx_path",
    "select_nodes",
]

#: Bumped whenever the quantized graph is made differently; part of the cache file name.
QUANT_VERSION = 2

#: The weight MatMuls of one encoder layer, as named by the graph builder.
LINEAR_KINDS = ("qkv", "attention_output", "ffn_in", "ffn_out")
#: The kinds whose input is a layer norm's output (smoothable) and a GELU's output.
_NORM_FED = ("qkv", "ffn_in")
_GELU_FED = "ffn_out"
_KIND_OF = {
    "attention.qkv": "qkv",
    "attention.output.dense": "attention_output",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}
_NODE = re.compile(
    r"^n\d+_encoder\.layer\.(\d+)\."
    r"(attention\.qkv|attention\.output\.dense|intermediate\.dense|output\.dense)\.mm$"
)


@dataclass(frozen=True)
class Recipe:
    """Which weight MatMuls of the converted BERT graph are quantized, and how.

    ``kinds`` are taken from :data:`LINEAR_KINDS`; ``fp32_layers`` are encoder layers
    left entirely in fp32 and ``fp32_nodes`` single ``(kind, layer)`` MatMuls left in
    fp32 (negative layer indices count from the last layer).  ``smoothing_alpha`` is
    SmoothQuant's migration strength for the inputs fed by a layer norm (None: no
    smoothing); ``gelu_zero_point`` the fixed uint8 zero point of GELU-fed inputs
    (:data:`~indexer.embedding.pertoken.SYMMETRIC_ZERO_POINT` makes them symmetric
    like the rest).  ``name`` is for people; the cache key is :meth:`fingerprint`.
    """

    name: str
    kinds: tuple[str, ...] = LINEAR_KINDS
    fp32_layers: tuple[int, ...] = ()
    fp32_nodes: tuple[tuple[str, int], ...] = ()
    smoothing_alpha: float | None = 0.5
    gelu_zero_point: int = 16

    def __post_init__(self) -> None:
        unknown = (set(self.kinds) | {kind for kind, _ in self.fp32_nodes}) - set(LINEAR_KINDS)
        if unknown or not self.kinds:
            raise ConfigurationError(
                f"recipe {self.name!r}: kinds must be a non-empty subset of "
                f"{', '.join(LINEAR_KINDS)}, not {', '.join(self.kinds) or 'nothing'}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            raise ConfigurationError(f"recipe name {self.name!r} must be [A-Za-z0-9_]+")
        if self.smoothing_alpha is not None and not 0.0 <= self.smoothing_alpha <= 1.0:
            raise ConfigurationError(f"recipe {self.name!r}: smoothing_alpha must be in [0, 1]")
        if not 1 <= self.gelu_zero_point <= SYMMETRIC_ZERO_POINT:
            raise ConfigurationError(
                f"recipe {self.name!r}: gelu_zero_point must be in 1..{SYMMETRIC_ZERO_POINT}"
            )

    def fingerprint(self) -> str:
        """A short hash of everything but the name: equal recipes share a cache file."""
        fields = dataclasses.asdict(self)
        del fields["name"]
        fields["kinds"] = sorted(fields["kinds"])
        fields["fp32_layers"] = sorted(fields["fp32_layers"])
        fields["fp32_nodes"] = sorted(fields["fp32_nodes"])
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


#: The shipped variant: all 24 weight MatMuls in int8, per-token scales, the inputs fed
#: by a layer norm smoothed (alpha 0.5), GELU-fed inputs with zero point 16.  Lowest
#: cosine to fp32 0.9973 on the bench corpus and 0.9951 on the quality corpus (a line of
#: underscores; real text 0.9977), where the per-call variant it replaced gave 0.9891 and
#: 0.9889; the same vector for a text alone and in any batch.  How it was chosen: the
#: module docstring, and benchmarks/int8_quality.py.
SHIPPED_RECIPE = Recipe("per_token")

#: sha256 of :data:`SHIPPED_RECIPE` applied to the packaged fp32 graph
#: (:data:`indexer.embedding.bert.PACKAGED_ONNX_SHA256`) with onnxruntime
#: :data:`PACKAGED_INT8_ONNXRUNTIME` (which measures the calibration ranges).  The
#: build is byte-stable (same bytes from separate processes, paths and cache
#: directories); another onnxruntime may round a range differently, which is logged and
#: then accepted through the sidecar hash.
PACKAGED_INT8_SHA256 = "dd316dacfbb20b90f2dad08e617b17f6babdcf1000e3e4d3ce586937d2be8dd6"
PACKAGED_INT8_ONNXRUNTIME = "1.32.0"


def _found_nodes(model: Any) -> dict[int, dict[str, Any]]:
    """The builder's weight MatMuls: layer -> kind -> node."""
    found: dict[int, dict[str, Any]] = {}
    for node in model.graph.node:
        match = _NODE.match(node.name)
        if match and node.op_type == "MatMul":
            found.setdefault(int(match.group(1)), {})[_KIND_OF[match.group(2)]] = node
    if not found:
        raise ConfigurationError(
            "the graph has no encoder MatMuls named by indexer.embedding.bert's builder; "
            "only graphs converted by the indexer can be quantized"
        )
    return found


def _selected(model: Any, recipe: Recipe) -> list[tuple[str, Any]]:
    """``(kind, node)`` of every MatMul that ``recipe`` quantizes, in graph order."""
    found = _found_nodes(model)
    layers = max(found) + 1
    skipped = {i % layers for i in recipe.fp32_layers if -layers <= i < layers}
    kept = {(kind, i % layers) for kind, i in recipe.fp32_nodes if -layers <= i < layers}
    chosen = [
        (kind, found[layer][kind])
        for layer in sorted(found)
        if layer not in skipped
        for kind in recipe.kinds
        if kind in found[layer] and (kind, layer) not in kept
    ]
    if not chosen:
        raise ConfigurationError(f"recipe {recipe.name!r} selects no node of this graph")
    return chosen


def select_nodes(model: Any, recipe: Recipe) -> list[str]:
    """Names of the nodes of ``model`` (an ``onnx.ModelProto``) that ``recipe`` quantizes.

    Raises :class:`ConfigurationError` for a graph that does not come from
    :func:`indexer.embedding.bert.build_onnx`: the recipe is defined on its node names.
    """
    return [node.name for _, node in _selected(model, recipe)]


def _linears(model: Any, recipe: Recipe) -> list[Linear]:
    """What :func:`indexer.embedding.pertoken.rewrite` needs for each selected MatMul."""
    from onnx import numpy_helper

    chosen = _selected(model, recipe)
    weights = {t.name: t for t in model.graph.initializer}
    smoothed = [
        node for kind, node in chosen if kind in _NORM_FED and recipe.smoothing_alpha is not None
    ]
    maxima = channel_maxima(model, [node.input[0] for node in smoothed])
    linears = []
    for kind, node in chosen:
        smoothing = None
        if recipe.smoothing_alpha is not None and node.input[0] in maxima:
            weight = np.asarray(numpy_helper.to_array(weights[node.input[1]]), np.float64)
            smoothing = smoothing_factors(maxima[node.input[0]], weight, recipe.smoothing_alpha)
        zero_point = recipe.gelu_zero_point if kind == _GELU_FED else SYMMETRIC_ZERO_POINT
        linears.append(Linear(node.name, zero_point, smoothing))
    return linears


def quantize_bytes(fp32: bytes, recipe: Recipe, *, source: Path | str) -> bytes:
    """Quantize the serialised fp32 graph ``fp32`` with ``recipe``; return the int8 bytes.

    Raises :class:`ModelNotFound` for an unreadable graph and :class:`ConfigurationError`
    for one the recipe does not apply to.
    """
    import onnx

    try:
        model = onnx.load_model_from_string(fp32)
    except Exception as exc:
        raise ModelNotFound(f"{source} is not a readable ONNX graph: {first_line(exc)}") from exc
    select_nodes(model, recipe)  # a foreign graph is refused before it is calibrated
    check_pooling(model)
    return rewrite(model, _linears(model, recipe))


def quantized_onnx_path(fp32_path: Path, cache_dir: Path, recipe: Recipe = SHIPPED_RECIPE) -> Path:
    """Return a verified cached int8 graph derived from ``fp32_path``, building it once.

    ``fp32_path`` must be a graph built by :func:`indexer.embedding.bert.build_onnx` (what
    :func:`indexer.embedding.resolve.resolve_model` returns for the packaged model or a
    safetensors folder).  The result is cached in ``cache_dir`` under a name made of
    the fp32 file's stem, :data:`QUANT_VERSION`, the recipe and the fp32 graph's
    sha256, and is re-hashed on every call: a corrupted or truncated copy is rebuilt.
    Raises :class:`ModelNotFound` for an unreadable or unquantizable graph and
    :class:`ConfigurationError` for an unusable cache directory or a foreign graph.
    """
    fp32 = read_source(fp32_path)
    fp32_sha = hashlib.sha256(fp32).hexdigest()
    ensure_cache_dir(cache_dir)
    tag = f".int8-q{QUANT_VERSION}-{recipe.name}-{recipe.fingerprint()}"
    target = cached_path(cache_dir, fp32_path.stem, tag, fp32_sha)
    packaged = fp32_sha == PACKAGED_ONNX_SHA256 and recipe.fingerprint() == (
        SHIPPED_RECIPE.fingerprint()
    )
    pinned = PACKAGED_INT8_SHA256 if packaged else None
    cached_build(
        target,
        pinned,
        lambda: quantize_bytes(fp32, recipe, source=fp32_path),
        cache_dir,
        what="int8 graph",
        producer="onnxruntime",
        built_from=f"quantized {fp32_path} ({recipe.name})",
    )
    return target
