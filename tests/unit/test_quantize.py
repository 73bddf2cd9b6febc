"""The int8 variant: built from the cached fp32 graph, cached itself, close to fp32, and
the same vector for a text alone and in any batch.

No database, no mocks: real graphs and real ONNX Runtime sessions.  The fp32 and int8
graphs live in the tests' shared model cache (built there once, about three seconds for
the int8 one); the test that corrupts a cached file builds it again from scratch in its
own directory.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime
import pytest

from indexer.bench.corpus import build_corpus
from indexer.embedding import Embedder
from indexer.embedding.cache import sidecar_path
from indexer.embedding.calibrate import calibration_ids
from indexer.embedding.quantize import (
    PACKAGED_INT8_ONNXRUNTIME,
    PACKAGED_INT8_SHA256,
    QUANT_VERSION,
    SHIPPED_RECIPE,
    Recipe,
    quantize_bytes,
    quantized_onnx_path,
)
from indexer.embedding.resolve import PACKAGED_MODEL_NAME, ModelFiles, resolve_model
from indexer.exceptions import ConfigurationError, ModelNotFound

from .embedding_helpers import (
    TINY_MODELS,
    onnx_folder,
    safetensors_folder,
    sha256_of,
    tiny_reference,
)

#: The int8 file name every cache already holds: changing it would rebuild on upgrade.
PACKAGED_INT8_NAME = (
    "all-MiniLM-L6-v2-g1-53aa51172d142c89.int8-q2-per_token-58941708-b1fe3d37bdcc0b0c.onnx"
)

#: Floors for the shipped recipe, chosen from benchmarks/int8_quality.py: over the 2,456
#: texts of the bench corpus the lowest cosine to fp32 was 0.9973 and the median 0.9990.
MIN_COSINE = 0.995
MEDIAN_COSINE = 0.998

TEXTS = [
    "PostgreSQL is an open source relational database with strong SQL support.",
    "Cats are small furry animals that like to sleep in the sun.",
    "The stock market fell sharply today as investors worried about inflation.",
    "Heavy rain is expected across the region tomorrow afternoon.",
    "Python is a programming language that is popular for data science.",
    "def quantized_onnx_path(fp32_path: Path, cache_dir: Path) -> Path:",
    "x",
    "Größe, café, naïve: accents and ß in one line; 東京 and emoji 🙂 too.",
    " ".join(["a longer text about vector search in a relational database"] * 20),
]
QUERIES = {
    0: "which database supports SQL well?",
    1: "a pet that naps in sunshine",
    2: "shares dropped because of inflation fears",
    3: "weather forecast: showers tomorrow",
    4: "a language for data scientists",
}


@pytest.fixture(scope="module")
def fp32_files(model_cache: Path) -> ModelFiles:
    return resolve_model(None, model_cache)


@pytest.fixture(scope="module")
def int8_path(fp32_files: ModelFiles, model_cache: Path) -> Path:
    return quantized_onnx_path(fp32_files.onnx_path, model_cache)


@pytest.fixture(scope="module")
def vectors(
    fp32_files: ModelFiles, int8_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """fp32 and int8 vectors of TEXTS followed by the QUERIES."""
    scratch = tmp_path_factory.mktemp("int8-models")
    texts = TEXTS + list(QUERIES.values())
    fp32 = Embedder(onnx_folder(scratch / "fp32", fp32_files.onnx_path), cache_dir=scratch)
    int8 = Embedder(onnx_folder(scratch / "int8", int8_path), cache_dir=scratch)
    return fp32.embed(texts), int8.embed(texts)


# ------------------------------------------------------------------ building and caching


def test_int8_file_name_encodes_source_recipe_and_version(
    fp32_files: ModelFiles, int8_path: Path, model_cache: Path
) -> None:
    assert int8_path.parent == model_cache
    assert int8_path.name == PACKAGED_INT8_NAME
    fp32_sha = sha256_of(fp32_files.onnx_path)
    assert int8_path.name == (
        f"{fp32_files.onnx_path.stem}.int8-q{QUANT_VERSION}-{SHIPPED_RECIPE.name}-"
        f"{SHIPPED_RECIPE.fingerprint()}-{fp32_sha[:16]}.onnx"
    )
    assert sidecar_path(int8_path).read_text().strip() == sha256_of(int8_path)


def test_int8_graph_quantizes_the_recipe_and_nothing_else(int8_path: Path) -> None:
    import onnx

    ops = [node.op_type for node in onnx.load(str(int8_path)).graph.node]
    # All 6 layers x 4 weight MatMuls; the 12 attention-score MatMuls (no constant
    # operand) stay fp32, and so do the embeddings.
    assert ops.count("MatMulIntegerToFloat") == 6 * 4 - len(SHIPPED_RECIPE.fp32_nodes) == 24
    assert ops.count("QuantizeLinear") == 24
    assert ops.count("MatMul") == 12
    assert "Gather" in ops and "DequantizeLinear" not in ops
    # One more layer norm per smoothed input (Q/K/V and FFN input of every layer); the
    # pooling and the norm sum in order (no ReduceSum over positions, no ReduceL2).
    assert ops.count("LayerNormalization") == 13 + 12
    assert ops.count("CumSum") == 2 and "ReduceL2" not in ops


def test_packaged_int8_bytes_are_pinned(int8_path: Path) -> None:
    if onnxruntime.__version__ != PACKAGED_INT8_ONNXRUNTIME:
        pytest.skip(f"pinned with onnxruntime {PACKAGED_INT8_ONNXRUNTIME}")
    assert sha256_of(int8_path) == PACKAGED_INT8_SHA256


def test_valid_cache_is_reused(fp32_files: ModelFiles, int8_path: Path, model_cache: Path) -> None:
    before = int8_path.stat()
    assert quantized_onnx_path(fp32_files.onnx_path, model_cache) == int8_path
    after = int8_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_corrupt_cache_is_rebuilt_with_the_same_bytes(
    fp32_files: ModelFiles, int8_path: Path, tmp_path: Path
) -> None:
    copy = tmp_path / int8_path.name
    shutil.copyfile(int8_path, copy)
    shutil.copyfile(sidecar_path(int8_path), sidecar_path(copy))
    good = sha256_of(copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))

    assert quantized_onnx_path(fp32_files.onnx_path, tmp_path) == copy
    # Rebuilt from scratch, byte for byte what the first build made: the quantizer is
    # deterministic, which is what lets the packaged bytes be pinned.
    assert sha256_of(copy) == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_calibration_ids_never_change() -> None:
    # They decide the smoothing, hence the pinned bytes: a change must be deliberate.
    ids = calibration_ids(30522)
    assert ids.shape == (16, 128)
    assert ids[0, :4].tolist() == [24536, 3225, 22425, 15384]
    assert ids.sum() == 31303584


def test_a_changed_recipe_gets_its_own_file_name() -> None:
    changed = dataclasses.replace(SHIPPED_RECIPE, fp32_nodes=(("ffn_out", 0),))
    assert changed.fingerprint() != SHIPPED_RECIPE.fingerprint()
    renamed = dataclasses.replace(SHIPPED_RECIPE, name="another_name")
    assert renamed.fingerprint() == SHIPPED_RECIPE.fingerprint()
    reordered = dataclasses.replace(SHIPPED_RECIPE, fp32_nodes=SHIPPED_RECIPE.fp32_nodes[::-1])
    assert reordered.fingerprint() == SHIPPED_RECIPE.fingerprint()


# ------------------------------------------------------------------ quality


def test_int8_vectors_stay_close_to_fp32(
    vectors: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
) -> None:
    fp32, int8 = vectors
    assert int8.shape == fp32.shape
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cosines = (fp32 * int8).sum(axis=1)
    assert cosines.min() >= MIN_COSINE, cosines
    assert float(np.median(cosines)) >= MEDIAN_COSINE, cosines
    assert cosines.min() < 0.99999  # really quantized, not the fp32 graph again


def test_int8_queries_find_the_same_texts(
    vectors: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
) -> None:
    _, int8 = vectors
    documents, queries = int8[: len(TEXTS)], int8[len(TEXTS) :]
    best = (queries @ documents.T).argmax(axis=1)
    assert best.tolist() == list(QUERIES)


@pytest.fixture(scope="module")
def int8_embedder(int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """The int8 graph, every embed() one model call (any batch below fits its budget)."""
    folder = onnx_folder(tmp_path_factory.mktemp("int8-batches") / "int8", int8_path)
    return Embedder(folder, cache_dir=folder.parent, token_budget=64 * 256)


def batch_texts(embedder: Embedder) -> list[str]:
    """100 texts of the bench corpus: 60 lines of 12-22 tokens, 40 chunks up to 256."""
    corpus = build_corpus(embedder.count_tokens, 60, 40, 0)
    return corpus.short + corpus.mixed


def test_a_text_gets_the_same_int8_vector_alone_and_in_any_batch(
    int8_embedder: Embedder,
) -> None:
    """Bit for bit: batches of 8 and 64, shuffled, each padded to its longest text.

    The per-call variant this replaced failed it (vectors moved by up to 0.03): its
    activation scale was the whole model call's, so a text's vector depended on the
    others in the call and on their padding.
    """
    texts = batch_texts(int8_embedder)
    alone = np.stack([int8_embedder.embed([text])[0] for text in texts])
    rng = random.Random(20261204)
    for size in (8, 64):
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order), size):
            chosen = order[start : start + size]
            batched = int8_embedder.embed([texts[i] for i in chosen])
            assert np.array_equal(batched, alone[chosen]), (size, start)


def test_int8_vectors_do_not_depend_on_how_calls_are_planned(
    int8_path: Path, int8_embedder: Embedder, tmp_path: Path
) -> None:
    texts = batch_texts(int8_embedder)
    # The daemon's default budget cuts the same texts into many model calls.
    small = Embedder(onnx_folder(tmp_path / "int8", int8_path), cache_dir=tmp_path)
    assert small.token_budget < sum(small.count_tokens(texts)) // 4
    assert np.array_equal(small.embed(texts), int8_embedder.embed(texts))


# ------------------------------------------------------------------ resolve_model


def test_resolve_model_int8_names_the_variant(model_cache: Path, int8_path: Path) -> None:
    fp32 = resolve_model(None, model_cache)
    int8 = resolve_model(None, model_cache, variant="int8")
    assert fp32.name == PACKAGED_MODEL_NAME
    assert int8.name == f"{PACKAGED_MODEL_NAME}-int8"
    assert int8.onnx_path == int8_path != fp32.onnx_path
    assert int8.tokenizer_path == fp32.tokenizer_path
    assert resolve_model(None, model_cache, variant="fp32") == fp32


def test_sentence_transformers_folder_int8(tmp_path: Path, int8_path: Path) -> None:
    folder = safetensors_folder(tmp_path / "my-model")
    files = resolve_model(folder, tmp_path / "cache", variant="int8")
    assert files.name == "my-model-int8"
    assert files.onnx_path.name.startswith("my-model-g1-")
    # The same weights give the same fp32 graph, hence the same int8 bytes.
    assert sha256_of(files.onnx_path) == sha256_of(int8_path)


def test_unknown_variant(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="one of fp32, int8, not 'int4'"):
        resolve_model(None, tmp_path, variant="int4")


def test_user_onnx_folder_refuses_int8(fp32_files: ModelFiles, tmp_path: Path) -> None:
    folder = onnx_folder(tmp_path / "user-model", fp32_files.onnx_path)
    assert resolve_model(folder, tmp_path / "cache").name == "user-model"
    with pytest.raises(ConfigurationError, match="int8 model variant is only available") as info:
        resolve_model(folder, tmp_path / "cache", variant="int8")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_foreign_graph_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[weight],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ConfigurationError, match="only graphs converted by the indexer"):
        quantized_onnx_path(path, tmp_path / "cache")


def test_unreadable_graphs(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="cannot read"):
        quantized_onnx_path(tmp_path / "missing.onnx", tmp_path / "cache")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelNotFound, match="not a readable ONNX graph") as info:
        quantized_onnx_path(garbage, tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_unwritable_cache_dir(fp32_files: ModelFiles, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="INDEXER_MODEL_CACHE"):
        quantized_onnx_path(fp32_files.onnx_path, blocker / "models")


def test_a_graph_with_a_norm_of_its_own_is_refused(fp32_files: ModelFiles) -> None:
    import onnx

    model = onnx.load(str(fp32_files.onnx_path))
    for node in model.graph.node:
        if node.op_type == "ReduceL2":
            node.output[0] = "renamed"
    with pytest.raises(ModelNotFound, match="renamed is not the builder's norm"):
        quantize_bytes(model.SerializeToString(), SHIPPED_RECIPE, source="renamed.onnx")


def test_a_cls_pooled_model_gets_the_same_int8_vector_alone_and_in_a_batch(
    tmp_path: Path,
) -> None:
    # A tiny BERT with CLS pooling (64 positions: the calibration shortens its ids).
    int8 = Embedder(
        TINY_MODELS / "bert-cls", cache_dir=tmp_path, variant="int8", token_budget=1 << 16
    )
    fp32 = Embedder(TINY_MODELS / "bert-cls", cache_dir=tmp_path)
    texts = [item["text"] for item in tiny_reference("bert-cls")["items"]] + ["x", "a b c d e"]
    together = int8.embed(texts)
    alone = np.stack([int8.embed([text])[0] for text in texts])
    assert np.array_equal(together, alone)
    assert ((together * fp32.embed(texts)).sum(axis=1) > 0.99).all()


def test_bad_recipes() -> None:
    with pytest.raises(ConfigurationError, match="kinds must be"):
        Recipe("oops", kinds=("ffn_middle",))
    with pytest.raises(ConfigurationError, match="recipe name"):
        Recipe("no spaces please")
    with pytest.raises(ConfigurationError, match="smoothing_alpha"):
        Recipe("too_strong", smoothing_alpha=1.5)
    with pytest.raises(ConfigurationError, match="gelu_zero_point"):
        Recipe("no_room", gelu_zero_point=0)
