"""Which checkpoints the indexer can turn into an ONNX graph: one :class:`Builder` per
``model_type`` of ``config.json`` (BERT, MPNet), and reading that file.

A model's description (:mod:`indexer.embedding.describe`) names its builder and the
builder's version (part of its fingerprint); the conversion
(:mod:`indexer.embedding.resolve`) runs it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from indexer.embedding import bert, mpnet
from indexer.embedding.graph import Pooling, Tensors
from indexer.exceptions import ModelNotFound

__all__ = ["BUILDERS", "Builder", "builder_for", "read_config", "read_json"]


class _Build(Protocol):
    def __call__(
        self, tensors: Tensors, config: Mapping[str, Any], *, pooling: Pooling, normalize: bool
    ) -> bytes: ...


@dataclass(frozen=True)
class Builder:
    """How to check, size and build one architecture's graph."""

    architecture: str
    version: int
    check_config: Callable[[Mapping[str, Any], str], None]
    max_positions: Callable[[Mapping[str, Any]], int]
    build: _Build

    @property
    def tag(self) -> str:
        """``bert-g1``: the builder and its version, as fingerprints record them."""
        return f"{self.architecture}-g{self.version}"


BUILDERS: Mapping[str, Builder] = {
    "bert": Builder(
        "bert", bert.GRAPH_VERSION, bert.check_config, bert.max_positions, bert.build_onnx
    ),
    "mpnet": Builder(
        "mpnet", mpnet.GRAPH_VERSION, mpnet.check_config, mpnet.max_positions, mpnet.build_onnx
    ),
}


def builder_for(config: Mapping[str, Any], where: str) -> Builder:
    """The builder for ``config``'s ``model_type``, after its own checks."""
    model_type = config.get("model_type", "bert")
    builder = BUILDERS.get(model_type) if isinstance(model_type, str) else None
    if builder is None:
        raise ModelNotFound(
            f"{where} describes a {model_type!r} model; only {' and '.join(BUILDERS)} models "
            "can be converted (supply model.onnx + tokenizer.json instead)"
        )
    builder.check_config(config, where)
    return builder


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a sentence-transformers folder, as a dict (one line if not)."""
    path = folder / "config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        raise ModelNotFound(f"{path} is not a JSON object")
    return config


def read_json(path: Path) -> Any:
    """A JSON file's content; :class:`ModelNotFound` (one line) if it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ModelNotFound(f"cannot read {path}: {reason}") from exc
