"""The ONNX Runtime embedder: golden vectors, model calls, threads, errors, truncation.

No database needed: the embedder runs the packaged model from the tests' shared model
cache.  How that graph is resolved and cached is tested in ``test_model_cache.py``.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from indexer.embedding import Embedder, Tokenized, load_embedder
from indexer.embedding.resolve import PACKAGED_MODEL_NAME, resolve_model
from indexer.exceptions import ConfigurationError, EmbeddingError, ModelNotFound
from indexer.settings import Settings

from .embedding_helpers import DIM, golden, onnx_folder, safetensors_folder

Vectors = npt.NDArray[np.float32]
DATABASE_MODULES = (
    "psycopg",
    "psycopg_pool",
    "sqlalchemy",
    "alembic",
    "indexer.db",
    "indexer.store",
    "indexer.worker",
)


def _varied_texts() -> list[str]:
    """Texts of many different token lengths (2 to 256 after truncation)."""
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "query", "index", "vector", "row", "token"]
    sizes = [rng.choice([0, 1, 2, 4, 8, 16, 30, 60, 120, 300]) for _ in range(24)]
    texts = [" ".join(rng.choice(words) for _ in range(size)) for size in sizes]
    return texts + [item["text"] for item in golden()]


@pytest.fixture(scope="module")
def reference(embedder: Embedder) -> tuple[list[str], Vectors]:
    texts = _varied_texts()
    return texts, embedder.embed(texts)


@pytest.mark.parametrize(
    "statement",
    [
        "import indexer.embedding",
        "from indexer import Embedder; Embedder",
        "from indexer.embedding import Embedder, load_embedder",
    ],
)
def test_import_loads_no_database_layer(statement: str) -> None:
    code = (
        f"{statement}\nimport sys\n"
        f"print(','.join(m for m in {DATABASE_MODULES!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "", f"loaded by {statement!r}: {result.stdout}"


# ------------------------------------------------------------------ golden vectors


def test_attributes(embedder: Embedder) -> None:
    assert embedder.dim == DIM
    assert embedder.name == PACKAGED_MODEL_NAME
    assert embedder.max_tokens == 256
    assert embedder.max_chars is None


@pytest.mark.parametrize("item", golden(), ids=lambda item: str(item["label"]))
def test_matches_sentence_transformers(embedder: Embedder, item: dict[str, Any]) -> None:
    expected = np.asarray(item["embedding"], dtype=np.float64)
    (vector,) = embedder.embed([item["text"]])
    assert vector.dtype == np.float32
    assert vector.shape == (DIM,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) <= 1e-5
    cosine = float(vector @ expected) / float(np.linalg.norm(expected))
    assert cosine >= 0.9999, f"{item['label']}: cosine {cosine}"


def test_golden_texts_in_one_call(embedder: Embedder) -> None:
    items = golden()
    vectors = embedder.embed([item["text"] for item in items])
    expected = np.asarray([item["embedding"] for item in items], dtype=np.float64)
    cosines = np.sum(vectors * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.9999


def test_golden_fixture_covers_hard_inputs() -> None:
    texts = [item["text"] for item in golden()]
    assert "" in texts
    assert any(t and not t.strip() for t in texts)
    assert any(len(t.split()) > 300 for t in texts)
    assert any(not t.isascii() for t in texts)


# ------------------------------------------------------------------ model calls


def test_results_do_not_depend_on_token_budget(
    model_cache: Path, reference: tuple[list[str], Vectors]
) -> None:
    texts, expected = reference
    for budget in (256, 65536):
        vectors = Embedder(cache_dir=model_cache, token_budget=budget).embed(texts)
        np.testing.assert_allclose(vectors, expected, atol=2e-6)


def test_results_do_not_depend_on_input_order(
    embedder: Embedder, reference: tuple[list[str], Vectors]
) -> None:
    texts, expected = reference
    order = list(range(len(texts)))
    random.Random(3).shuffle(order)
    vectors = embedder.embed([texts[i] for i in order])
    np.testing.assert_allclose(vectors, expected[order], atol=2e-6)


def test_embed_tokenized_is_embed(embedder: Embedder, reference: tuple[list[str], Vectors]) -> None:
    texts, expected = reference
    tokenized = embedder.tokenize(texts)
    assert tokenized.texts == tuple(texts)
    np.testing.assert_array_equal(embedder.embed_tokenized(tokenized), expected)
    order = tokenized.by_length()
    np.testing.assert_allclose(
        embedder.embed_tokenized(tokenized.select(order)), expected[order], atol=2e-6
    )


def test_duplicates_and_single_text(
    embedder: Embedder, reference: tuple[list[str], Vectors]
) -> None:
    texts, expected = reference
    vectors = embedder.embed([texts[5], texts[5], texts[0]])
    np.testing.assert_allclose(vectors, expected[[5, 5, 0]], atol=2e-6)


def test_embed_empty_list(embedder: Embedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, DIM)
    assert vectors.dtype == np.float32


def test_embed_rejects_what_is_not_a_list_of_strings(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match="not a single string"):
        embedder.embed("not a list")
    with pytest.raises(TypeError, match=r"texts\[1\] is int, not str"):
        embedder.embed(["fine", 3])  # type: ignore[list-item]


def test_lone_surrogate_is_dropped(embedder: Embedder) -> None:
    vectors = embedder.embed(["a\ud800b", "ab"])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=2e-6)


def test_concurrent_use_from_threads(
    embedder: Embedder, reference: tuple[list[str], Vectors]
) -> None:
    texts, expected = reference
    results: dict[int, Vectors] = {}

    def work(k: int) -> None:
        results[k] = embedder.embed(texts[k::3])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(3):
        np.testing.assert_allclose(results[k], expected[k::3], atol=2e-6)


def test_one_thread_gives_the_same_vectors(
    model_cache: Path, reference: tuple[list[str], Vectors]
) -> None:
    texts, expected = reference
    vectors = Embedder(cache_dir=model_cache, threads=1).embed(texts)
    np.testing.assert_allclose(vectors, expected, atol=2e-6)


def test_non_finite_output_raises(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    class NanModel:
        def run(self, ids: npt.NDArray[np.int64], mask: Any, **options: Any) -> Vectors:
            out = np.full((ids.shape[0], DIM), 0.05, dtype=np.float32)
            out[-1, 3] = np.nan
            return out

    monkeypatch.setattr(embedder, "_model", NanModel())
    with pytest.raises(
        EmbeddingError, match=r"non-finite values for 1 of 2 texts \(input positions 1\)"
    ):
        embedder.embed(["one", "two words"])


def test_a_failed_model_call_is_an_embedding_error(embedder: Embedder) -> None:
    # A token id beyond the vocabulary: ONNX Runtime's Gather refuses it.
    bad = Tokenized(("x",), ((101, 10**6, 102),))
    with pytest.raises(
        EmbeddingError, match="ONNX Runtime failed on a model call of 1 x 3 tokens"
    ) as info:
        embedder.embed_tokenized(bad)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ tokens and characters


def test_count_tokens_truncates_at_max_tokens(embedder: Embedder) -> None:
    long_text = "word " * 1000
    assert embedder.count_tokens(["", "   ", "hello world", long_text]) == [2, 2, 4, 256]
    assert embedder.count_tokens([]) == []


def test_long_texts_are_truncated_not_rejected(embedder: Embedder) -> None:
    base = "token " * 254  # exactly 256 tokens with [CLS] and [SEP]
    vectors = embedder.embed([base, base + "tail " * 500])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=2e-6)


def test_smaller_max_tokens(model_cache: Path) -> None:
    small = Embedder(cache_dir=model_cache, max_tokens=16, token_budget=64)
    assert small.count_tokens(["word " * 100]) == [16]
    assert small.embed(["word " * 100]).shape == (1, DIM)


def test_max_chars_truncates_before_tokenizing(model_cache: Path, embedder: Embedder) -> None:
    five = Embedder(cache_dir=model_cache, max_chars=5)
    assert five.max_chars == 5
    assert five.tokenize(["abcdefgh", "abc"]).texts == ("abcde", "abc")
    np.testing.assert_array_equal(five.embed(["abcdefgh"]), five.embed(["abcde"]))
    np.testing.assert_allclose(five.embed(["abcdefgh"]), embedder.embed(["abcde"]), atol=2e-6)
    assert not np.allclose(five.embed(["abcdefgh"]), embedder.embed(["abcdefgh"]), atol=1e-3)


def test_load_embedder_follows_the_settings(model_cache: Path) -> None:
    settings = Settings(model_cache=model_cache, max_chars=5, token_budget=300, threads=1)
    loaded = load_embedder(settings)
    assert (loaded.name, loaded.max_chars, loaded.token_budget) == (PACKAGED_MODEL_NAME, 5, 300)
    assert loaded.tokenize(["abcdefgh"]).texts == ("abcde",)


# ------------------------------------------------------------------ configuration


def test_unknown_provider(model_cache: Path) -> None:
    with pytest.raises(ConfigurationError, match="NoSuchExecutionProvider is not available"):
        Embedder(cache_dir=model_cache, providers=("NoSuchExecutionProvider",))
    with pytest.raises(ConfigurationError, match="no execution provider given"):
        Embedder(cache_dir=model_cache, providers=())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 1},
        {"max_tokens": 513},
        {"token_budget": 0},
        {"threads": 0},
        {"max_chars": 0},
    ],
)
def test_invalid_settings(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Embedder(cache_dir=tmp_path / "cache", **kwargs)
    assert not (tmp_path / "cache").exists()  # refused before any model file is touched


def test_missing_model_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelNotFound, match="nowhere"):
        Embedder(missing, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------ user-supplied models


@pytest.fixture
def golden_subset() -> Iterator[tuple[list[str], npt.NDArray[np.float64]]]:
    items = golden()[:5]
    yield (
        [item["text"] for item in items],
        np.asarray([item["embedding"] for item in items], dtype=np.float64),
    )


def _assert_close_to_golden(vectors: Vectors, expected: npt.NDArray[np.float64]) -> None:
    cosines = np.sum(vectors * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.9999


def test_sentence_transformers_folder(
    tmp_path: Path, golden_subset: tuple[list[str], npt.NDArray[np.float64]]
) -> None:
    folder = safetensors_folder(tmp_path / "my-model")
    cache = tmp_path / "cache"
    emb = Embedder(folder, cache_dir=cache)
    assert emb.name == "my-model"
    (converted,) = cache.glob("*.onnx")
    assert converted.name.startswith("my-model-")
    texts, expected = golden_subset
    _assert_close_to_golden(emb.embed(texts), expected)


def test_onnx_folder_with_sentence_embedding_output(
    tmp_path: Path,
    model_cache: Path,
    golden_subset: tuple[list[str], npt.NDArray[np.float64]],
) -> None:
    folder = onnx_folder(tmp_path / "onnx-model", resolve_model(None, model_cache).onnx_path)
    emb = Embedder(folder, cache_dir=tmp_path / "unused-cache")
    assert emb.name == "onnx-model"
    assert not (tmp_path / "unused-cache").exists()
    texts, expected = golden_subset
    _assert_close_to_golden(emb.embed(texts), expected)


def test_onnx_folder_with_last_hidden_state_output(
    tmp_path: Path,
    model_cache: Path,
    golden_subset: tuple[list[str], npt.NDArray[np.float64]],
) -> None:
    import onnx
    from onnx import TensorProto, helper

    # The packaged graph, cut after the encoder: output last_hidden_state instead.
    model = onnx.load(str(resolve_model(None, model_cache).onnx_path))
    model.graph.node.append(
        helper.make_node("Identity", ["encoder.layer.5.output.ln"], ["last_hidden_state"])
    )
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", DIM]
        )
    )
    graph = tmp_path / "hidden-state.onnx"
    onnx.save(model, str(graph))
    emb = Embedder(onnx_folder(tmp_path / "hidden-state-model", graph), cache_dir=tmp_path)
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
    path = tmp_path / "wrong.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelNotFound, match="expected input_ids and attention_mask"):
        Embedder(onnx_folder(tmp_path / "wrong", path), cache_dir=tmp_path / "cache")


def test_onnx_folder_with_unreadable_graph(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelNotFound, match="ONNX Runtime cannot load"):
        Embedder(onnx_folder(tmp_path / "garbage", path), cache_dir=tmp_path / "cache")


def test_unloadable_tokenizer(tmp_path: Path, model_cache: Path) -> None:
    folder = tmp_path / "bad-tokenizer"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(resolve_model(None, model_cache).onnx_path)
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelNotFound, match=r"cannot load .*tokenizer\.json"):
        Embedder(folder, cache_dir=tmp_path / "cache")
