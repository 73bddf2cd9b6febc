"""The BERT graph builder: byte-stable output, and the configurations it refuses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from indexer.embedding.architectures import builder_for, read_config
from indexer.embedding.bert import PACKAGED_ONNX_SHA256, build_onnx
from indexer.embedding.graph import Pooling
from indexer.embedding.safetensors import read_safetensors_bytes
from indexer.exceptions import ModelNotFound

from .embedding_helpers import package_dir


def _config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((package_dir() / "config.json").read_text())
    return config


def test_build_is_byte_stable() -> None:
    tensors = read_safetensors_bytes((package_dir() / "model.safetensors").read_bytes())
    config = read_config(package_dir())
    first = build_onnx(tensors, config)
    assert hashlib.sha256(first).hexdigest() == PACKAGED_ONNX_SHA256
    assert build_onnx(tensors, config) == first
    # The other poolings are other graphs, each as stable.
    choices: tuple[tuple[Pooling, bool], ...] = (("cls", True), ("cls", False), ("mean", False))
    others = {
        build_onnx(tensors, config, pooling=pooling, normalize=normalize)
        for pooling, normalize in choices
    }
    assert len(others) == 3
    assert first not in others
    assert build_onnx(tensors, config, pooling="cls", normalize=False) in others


def _folder(tmp_path: Path, config: Any) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_read_config_accepts_the_packaged_model(tmp_path: Path) -> None:
    assert read_config(package_dir())["hidden_size"] == 384
    assert builder_for(_config(), "config.json").tag == "bert-g1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "roberta"}, "describes a 'roberta' model; only bert and mpnet models"),
        ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
        ({"position_embedding_type": "relative_key"}, "only absolute position embeddings"),
    ],
)
def test_read_config_refuses_other_architectures(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    with pytest.raises(ModelNotFound, match=message):
        builder_for(read_config(_folder(tmp_path, _config() | change)), "config.json")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_read_config_refuses_unreadable_files(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        read_config(tmp_path)
    with pytest.raises(ModelNotFound, match="cannot read"):
        read_config(tmp_path / "missing")


def test_build_refuses_incomplete_inputs() -> None:
    config = _config()
    with pytest.raises(ModelNotFound, match=r"config\.json lacks a usable 'hidden_size' entry"):
        build_onnx({}, {k: v for k, v in config.items() if k != "hidden_size"})
    with pytest.raises(ModelNotFound, match="not a multiple of num_attention_heads"):
        build_onnx({}, config | {"num_attention_heads": 5})
    with pytest.raises(
        ModelNotFound, match=r"lacks the tensor 'embeddings\.word_embeddings\.weight'"
    ):
        build_onnx({}, config)
