"""An opt-in int8 variant of the converted graph (ONNX Runtime dynamic quantization).

The fp32 graph that :mod:`indexer.embedding.bert` builds is quantized once with ONNX Runtime's
own tool, :func:`onnxruntime.quantization.quantize_dynamic` (it ships inside the
onnxruntime wheel and needs only onnx, numpy and ml_dtypes, which the product already
has), and cached beside it.  Weights become int8 ahead of time; activations are
quantized to uint8 at run time, one scale per tensor per call.

Choices, and why (figures: ``benchmarks/int8_quality.py`` on the bench corpus):

* **Per-channel weights** (one scale per output column).  Per-tensor weights, the
  library default, gave cosines to fp32 down to 0.89 (median 0.96) on 564 bench
  texts: useless for retrieval.
* **int8 weights x uint8 activations (U8S8)**.  Dynamic quantization always makes
  uint8 activations.  On a CPU with AVX-512 VNNI (this AMD EPYC Zen 4 has it) MLAS
  runs uint8 x int8 with its VNNI kernel, whose ``vpdpbusd`` takes exactly that
  operand pair; uint8 x uint8 has no such instruction on x86 short of AVX-VNNI-INT8
  (which Zen 4 lacks) and stays on the AVX-512 core kernel that widens to 16 bits.
  Measured: uint8 weights 1.3x fp32, int8 weights 2.1x.  No ``reduce_range``: its
  7-bit weights avoid the int16 saturation of ``vpmaddubsw`` on CPUs without VNNI;
  ``vpdpbusd`` accumulates into int32, so here it would only cost precision.
* **Which MatMuls**: see :data:`SHIPPED_RECIPE`.  Only the four weight MatMuls of each
  layer (fused Q/K/V, attention output, FFN in, FFN out) are candidates; the
  attention-score MatMuls have no constant operand and stay fp32, and so do the
  embedding tables.

Activation scales are computed per model call from all its texts (padding included),
so an int8 vector depends on the other texts in its model call: the same text embedded alone
and inside a 120-text call gave cosines down to 0.986 (median 0.994) between the two
vectors, where fp32 gives 0.9999993.  Both stay as close to the fp32 vector as the
figures below say, but int8 vectors are not reproducible to float precision.

The cache file name carries the fp32 graph's sha256, the recipe's fingerprint and
:data:`QUANT_VERSION`, so a changed fp32 graph or recipe never reuses a stale file.
The quantizer's output is byte-stable for a given onnxruntime version; the bytes for
the packaged model are pinned (:data:`PACKAGED_INT8_SHA256`), others are checked
against a sidecar hash, as for fp32 graphs (both go through :mod:`indexer.embedding.cache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from indexer.embedding.bert import PACKAGED_ONNX_SHA256
from indexer.embedding.cache import (
    cache_error,
    cached_build,
    cached_path,
    ensure_cache_dir,
    read_source,
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

#: Bumped whenever the way the quantizer is called changes; part of the cache file name.
QUANT_VERSION = 1

#: The weight MatMuls of one encoder layer, as named by the graph builder.
LINEAR_KINDS = ("qkv", "attention_output", "ffn_in", "ffn_out")
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
_WORD_TABLE = "embeddings.word_embeddings.weight"


@dataclass(frozen=True)
class Recipe:
    """Which parts of the converted BERT graph are quantized, and how.

    ``kinds`` are taken from :data:`LINEAR_KINDS`; ``fp32_layers`` are encoder layers
    left entirely in fp32 and ``fp32_nodes`` single ``(kind, layer)`` MatMuls left in
    fp32 (negative layer indices count from the last layer).  The word
    embedding table is quantized (per tensor, it is a Gather) only with
    ``embeddings``.  ``name`` is for people; the cache key is :meth:`fingerprint`.
    """

    name: str
    kinds: tuple[str, ...] = LINEAR_KINDS
    fp32_layers: tuple[int, ...] = ()
    fp32_nodes: tuple[tuple[str, int], ...] = ()
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False
    embeddings: bool = False

    def __post_init__(self) -> None:
        unknown = (set(self.kinds) | {kind for kind, _ in self.fp32_nodes}) - set(LINEAR_KINDS)
        if unknown or not self.kinds:
            raise ConfigurationError(
                f"recipe {self.name!r}: kinds must be a non-empty subset of "
                f"{', '.join(LINEAR_KINDS)}, not {', '.join(self.kinds) or 'nothing'}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            raise ConfigurationError(f"recipe name {self.name!r} must be [A-Za-z0-9_]+")

    def fingerprint(self) -> str:
        """A short hash of everything but the name: equal recipes share a cache file."""
        fields = dataclasses.asdict(self)
        del fields["name"]
        fields["kinds"] = sorted(fields["kinds"])
        fields["fp32_layers"] = sorted(fields["fp32_layers"])
        fields["fp32_nodes"] = sorted(fields["fp32_nodes"])
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


#: The shipped variant: every weight MatMul except the FFN output projection of the
#: first three layers.  That MatMul reads the GELU output, which spans about
#: -0.17..+24 in layer 0 (shrinking to -0.17..+4 by layer 5): with one uint8 scale per
#: tensor a step is 0.27-0.37 of its RMS in layers 0-2 (about 0.1 at the inputs of
#: the attention MatMuls, 0.15-0.24 at the FFN input) and a fifth of its values
#: round to zero.  On the bench
#: corpus, against quantizing all 24 MatMuls, keeping those three in fp32 lifts the
#: worst cosine to fp32 from 0.977 to 0.989, the median from 0.9928 to 0.9957 and the
#: top-10 neighbour overlap from 0.865 to 0.886, for 1.8x/1.7x fp32's speed (short
#: lines/~1 KB chunks) instead of 2.1x/2.0x.  Keeping all six in fp32 adds little
#: quality (0.990, 0.9962, 0.892) and falls to 1.5x.  The table and how it was
#: measured: benchmarks/int8_quality.py.
SHIPPED_RECIPE = Recipe(
    "no_early_ffn_out", fp32_nodes=(("ffn_out", 0), ("ffn_out", 1), ("ffn_out", 2))
)

#: sha256 of :data:`SHIPPED_RECIPE` applied to the packaged fp32 graph
#: (:data:`indexer.embedding.bert.PACKAGED_ONNX_SHA256`) by onnxruntime
#: :data:`PACKAGED_INT8_ONNXRUNTIME`.  The quantizer's output is byte-stable (same
#: bytes from separate processes, paths and cache directories), but its code is part
#: of onnxruntime: another version may serialise differently, which is logged and
#: then accepted through the sidecar hash.
PACKAGED_INT8_SHA256 = "67b7a26e59d8f360ef047b90cd1408ac4939a78dace59b2af42aecde5f25a563"
PACKAGED_INT8_ONNXRUNTIME = "1.32.0"


def select_nodes(model: Any, recipe: Recipe) -> list[str]:
    """Names of the nodes of ``model`` (an ``onnx.ModelProto``) that ``recipe`` quantizes.

    Raises :class:`ConfigurationError` for a graph that does not come from
    :func:`indexer.embedding.bert.build_onnx`: the recipe is defined on its node names.
    """
    found: dict[int, dict[str, str]] = {}
    for node in model.graph.node:
        match = _NODE.match(node.name)
        if match and node.op_type == "MatMul":
            found.setdefault(int(match.group(1)), {})[_KIND_OF[match.group(2)]] = node.name
    if not found:
        raise ConfigurationError(
            "the graph has no encoder MatMuls named by indexer.embedding.bert's builder; "
            "only graphs converted by the indexer can be quantized"
        )
    layers = max(found) + 1
    skipped = {i % layers for i in recipe.fp32_layers if -layers <= i < layers}
    kept = {(kind, i % layers) for kind, i in recipe.fp32_nodes if -layers <= i < layers}
    names = [
        found[layer][kind]
        for layer in sorted(found)
        if layer not in skipped
        for kind in recipe.kinds
        if kind in found[layer] and (kind, layer) not in kept
    ]
    if recipe.embeddings:
        names += [
            node.name
            for node in model.graph.node
            if node.op_type == "Gather" and node.input and node.input[0] == _WORD_TABLE
        ]
    if not names:
        raise ConfigurationError(f"recipe {recipe.name!r} selects no node of this graph")
    return names


class _QuantizerChatter(logging.Filter):
    """Drops the quantizer's own messages below ERROR (it logs on the root logger).

    It suggests a pre-processing step (symbolic shape inference, which would need
    sympy, and an ORT optimisation pass the session does anyway at load time) and
    reports every MatMul it skips on purpose; neither is news to our users.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from_quantizer = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not (from_quantizer and record.levelno < logging.ERROR)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the quantizer's root-logger chatter for the duration of one call.

    The quantizer calls ``logging.warning``/``logging.info`` at module level, which
    also runs ``logging.basicConfig()`` when the root logger has no handler, i.e. it
    would install a stderr handler in a library user's process.  A NullHandler held
    for the call prevents that; both are removed afterwards.
    """
    root = logging.getLogger()
    chatter = _QuantizerChatter()
    guard = logging.NullHandler() if not root.handlers else None
    root.addFilter(chatter)
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            root.removeHandler(guard)
        root.removeFilter(chatter)


def quantize_bytes(fp32: bytes, recipe: Recipe, work_dir: Path, *, source: Path | str) -> bytes:
    """Quantize the serialised fp32 graph ``fp32`` with ``recipe``; return the int8 bytes.

    The quantizer works on files and writes a shape-inferred copy of its input next
    to it under a fixed name, so input and output live in a private temporary folder
    inside ``work_dir`` (same filesystem as the cache; two processes never collide).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        model = onnx.load_model_from_string(fp32)
    except Exception as exc:
        raise ModelNotFound(f"{source} is not a readable ONNX graph: {first_line(exc)}") from exc
    nodes = select_nodes(model, recipe)
    del model
    op_types = ["MatMul", "Gather"] if recipe.embeddings else ["MatMul"]
    weight_type = QuantType.QInt8 if recipe.weight_type == "int8" else QuantType.QUInt8
    try:
        with tempfile.TemporaryDirectory(dir=work_dir, prefix=".int8-build-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(fp32)
            try:
                with _quiet_quantizer():
                    quantize_dynamic(
                        src,
                        dst,
                        op_types_to_quantize=op_types,
                        per_channel=True,
                        reduce_range=recipe.reduce_range,
                        weight_type=weight_type,
                        nodes_to_quantize=nodes,
                    )
            except OSError:
                raise
            except Exception as exc:
                raise ModelNotFound(
                    f"ONNX Runtime could not quantize {source}: {first_line(exc)}"
                ) from exc
            return dst.read_bytes()
    except OSError as exc:
        raise cache_error(work_dir, exc) from exc


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
        lambda: quantize_bytes(fp32, recipe, cache_dir, source=fp32_path),
        cache_dir,
        what="int8 graph",
        producer="onnxruntime",
        built_from=f"quantized {fp32_path} ({recipe.name})",
    )
    return target
