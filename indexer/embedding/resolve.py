"""A described model's files (locate), and the ONNX graph they become (convert).

Steps 2 and 3 of the way from a :class:`~indexer.embedding.describe.ModelRecord` to
vectors (step 1 is :mod:`indexer.embedding.describe`, step 4 the
:class:`~indexer.embedding.embedder.Embedder`):

* :func:`locate` finds the record's folder again (the packaged model by importing
  its package) and checks that its files are still the ones described: a record
  kept in a database must never run on other weights or another tokenizer silently.
* :func:`convert` returns the graph to run: a supplied ``model.onnx`` as it is, or
  the graph built from ``model.safetensors`` by the record's builder
  (:mod:`indexer.embedding.architectures`), cached under the parts of the record that
  decide the graph (weights, builder, pooling, normalisation; prefixes and max tokens
  do not change it), then its int8 variant if asked for
  (:mod:`indexer.embedding.quantize`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from indexer.embedding.architectures import BUILDERS, read_config
from indexer.embedding.bert import (
    GRAPH_VERSION,
    PACKAGED_ONNX_SHA256,
    PACKAGED_SAFETENSORS_SHA256,
)
from indexer.embedding.cache import (
    cached_build,
    cached_path,
    ensure_cache_dir,
    file_sha256,
    read_source,
)
from indexer.embedding.describe import (
    MODEL_VARIANTS,
    PACKAGED_MODEL_NAME,
    PACKAGED_SOURCE,
    SUPPLIED_GRAPH,
    ModelRecord,
    describe,
    packaged_folder,
)
from indexer.embedding.quantize import quantized_onnx_path
from indexer.embedding.safetensors import read_safetensors_bytes
from indexer.exceptions import ModelChanged

__all__ = [
    "MODEL_VARIANTS",
    "PACKAGED_MODEL_NAME",
    "LocatedModel",
    "ModelFiles",
    "cached_onnx_path",
    "convert",
    "locate",
    "resolve_model",
]


@dataclass(frozen=True)
class LocatedModel:
    """A record's files on this machine: ``weights`` is ``model.safetensors`` (with
    ``config.json`` beside it) or a supplied ``model.onnx``."""

    folder: Path
    weights: Path
    tokenizer: Path


@dataclass(frozen=True)
class ModelFiles:
    """The files the embedder loads: an ONNX graph and a ``tokenizer.json``."""

    name: str
    onnx_path: Path
    tokenizer_path: Path


def locate(record: ModelRecord) -> LocatedModel:
    """The record's files, after checking that ``tokenizer.json`` (and a supplied
    ``model.onnx``, which runs as it is) still hash to what the record says.

    Converted weights are checked when a graph is built from them (:func:`convert`):
    a cached graph was built from the weights the record names.  Raises
    :class:`~indexer.exceptions.ModelChanged` for a changed file and
    :class:`~indexer.exceptions.ModelNotFound` for a missing one.
    """
    folder = packaged_folder() if record.source == PACKAGED_SOURCE else Path(record.source)
    supplied = record.architecture == SUPPLIED_GRAPH
    located = LocatedModel(
        folder,
        folder / ("model.onnx" if supplied else "model.safetensors"),
        folder / "tokenizer.json",
    )
    _check_unchanged(record, located.tokenizer, record.tokenizer_sha256)
    if supplied:
        _check_unchanged(record, located.weights, record.weights_sha256)
    return located


def convert(record: ModelRecord, located: LocatedModel, cache_dir: Path) -> Path:
    """The ONNX graph that computes the record's vectors, built (once) if needed."""
    if record.architecture == SUPPLIED_GRAPH:
        return located.weights
    builder = BUILDERS[record.architecture]
    if record.builder.split("+")[0] != builder.tag:
        raise ModelChanged(
            f"{record.name} was described for the {record.builder} conversion; this "
            f"indexer builds {builder.tag}: describe the model again (its vectors will change)"
        )
    ensure_cache_dir(cache_dir)
    target = cached_path(cache_dir, record.name, _graph_tag(record), record.weights_sha256)
    packaged = (
        record.weights_sha256 == PACKAGED_SAFETENSORS_SHA256
        and record.architecture == "bert"
        and (record.pooling, record.normalize) == ("mean", True)
    )

    def build() -> bytes:
        weights_bytes = read_source(located.weights)
        if hashlib.sha256(weights_bytes).hexdigest() != record.weights_sha256:
            raise _changed(record, located.weights)
        tensors = read_safetensors_bytes(weights_bytes, source=located.weights)
        config = read_config(located.folder)
        return builder.build(tensors, config, pooling=record.pooling, normalize=record.normalize)

    cached_build(
        target,
        PACKAGED_ONNX_SHA256 if packaged else None,
        build,
        cache_dir,
        what="ONNX graph",
        producer="onnx package",
        built_from=f"converted {located.weights}",
    )
    if record.variant == "int8":
        return quantized_onnx_path(target, cache_dir)
    return target


def _graph_tag(record: ModelRecord) -> str:
    """What selects the graph, besides the weights: ``-g1`` for a mean-pooled,
    normalised BERT (the name caches have held since the first release), else the
    builder, pooling and normalisation (``-mpnet-g1-cls-raw``)."""
    tag = record.builder.split("+")[0]
    base = f"-g{GRAPH_VERSION}" if tag == f"bert-g{GRAPH_VERSION}" else f"-{tag}"
    if (record.pooling, record.normalize) == ("mean", True):
        return base
    return f"{base}-{record.pooling}" + ("" if record.normalize else "-raw")


def cached_onnx_path(name: str, safetensors_sha256: str, cache_dir: Path) -> Path:
    """Where the mean-pooled, normalised BERT graph converted from weights with this
    sha256 is cached (the packaged model's)."""
    return cached_path(cache_dir, name, f"-g{GRAPH_VERSION}", safetensors_sha256)


def _check_unchanged(record: ModelRecord, path: Path, expected: str) -> None:
    if file_sha256(path) != expected:
        raise _changed(record, path)


def _changed(record: ModelRecord, path: Path) -> ModelChanged:
    return ModelChanged(
        f"{path} is not the file model {record.name} was described with (its sha256 "
        "differs): describe the model again (its vectors will change)"
    )


def resolve_model(model_dir: Path | None, cache_dir: Path, variant: str = "fp32") -> ModelFiles:
    """Describe, locate and convert in one call: the files for what the settings name.

    ``model_dir`` None means the packaged all-MiniLM-L6-v2; otherwise a
    ``model.onnx`` + ``tokenizer.json`` folder (used as is) or a sentence-transformers
    folder (converted once into ``cache_dir``).  ``variant="int8"`` gives the int8
    graph, named ``<name>-int8``.
    """
    record = describe(model_dir, variant=variant)
    located = locate(record)
    return ModelFiles(record.label, convert(record, located, cache_dir), located.tokenizer)
