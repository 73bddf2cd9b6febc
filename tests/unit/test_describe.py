"""Describing a model (one frozen record, its fingerprint), locating its files and
converting them: what the folder says, what changes the fingerprint and what does
not, and every broken folder refused with one line.

The tiny models of tests/fixtures/models are copied where a test changes a file;
the packaged all-MiniLM-L6-v2 is only read.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from indexer.embedding import Embedder
from indexer.embedding.bert import PACKAGED_SAFETENSORS_SHA256
from indexer.embedding.describe import (
    PACKAGED_MODEL_NAME,
    PACKAGED_SOURCE,
    ModelRecord,
    describe,
    describe_folder,
    describe_packaged,
)
from indexer.embedding.resolve import convert, locate
from indexer.exceptions import ConfigurationError, ModelChanged, ModelNotFound

from .embedding_helpers import TINY_MODELS, package_dir, tiny_copy


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))), encoding="utf-8")


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# ------------------------------------------------------------------ the packaged model


def test_the_packaged_model() -> None:
    record = describe_packaged()
    assert record == describe(None)
    assert (record.name, record.source, record.kind) == (
        PACKAGED_MODEL_NAME,
        PACKAGED_SOURCE,
        "local",
    )
    assert (record.architecture, record.builder, record.dimension) == ("bert", "bert-g1", 384)
    # 256 from sentence_bert_config.json (its tokenizer.json says 128); the old-style
    # Pooling config (pooling_mode_mean_tokens) and the Normalize module of modules.json.
    assert (record.max_tokens, record.pooling, record.normalize) == (256, "mean", True)
    assert (record.query_prefix, record.document_prefix, record.variant) == ("", "", "fp32")
    assert record.weights_sha256 == PACKAGED_SAFETENSORS_SHA256
    assert len(record.fingerprint) == 64
    assert locate(record).folder == package_dir()


def test_the_variant_and_max_tokens_of_the_settings() -> None:
    int8 = describe(None, variant="int8", max_tokens=128)
    assert int8.label == f"{PACKAGED_MODEL_NAME}-int8"
    assert int8.builder.startswith("bert-g1+int8-q2-per_token-")
    assert int8.max_tokens == 128
    assert int8 == describe_packaged().with_options(max_tokens=128, variant="int8")
    with pytest.raises(ConfigurationError, match="one of fp32, int8, not 'int4'"):
        describe(None, variant="int4")


# ------------------------------------------------------------------ the fingerprint


@pytest.fixture
def bert(tmp_path: Path) -> Path:
    return tiny_copy("bert-mean", tmp_path / "bert-mean")


def test_fingerprint_is_stable_and_ignores_name_and_place(bert: Path, tmp_path: Path) -> None:
    first = describe_folder(bert)
    assert describe_folder(bert).fingerprint == first.fingerprint
    moved = shutil.copytree(bert, tmp_path / "elsewhere" / "renamed")
    again = describe_folder(moved, name="another name")
    assert (again.name, again.source) == ("another name", str(moved))
    assert again.fingerprint == first.fingerprint
    assert ModelRecord.from_dict(json.loads(json.dumps(first.as_dict()))) == first


def _flip_weight_byte(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's data: still a valid file
    (folder / "model.safetensors").write_bytes(bytes(data))


def _pooling_cls(folder: Path) -> None:
    _edit_json(folder / "1_Pooling" / "config.json", lambda c: c | {"pooling_mode": "cls"})


def _no_normalize(folder: Path) -> None:
    _edit_json(folder / "modules.json", lambda modules: modules[:2])


def _query_prompt(folder: Path) -> None:
    path = folder / "config_sentence_transformers.json"
    _edit_json(path, lambda c: c | {"prompts": c["prompts"] | {"query": "question: "}})


def _document_prompt(folder: Path) -> None:
    path = folder / "config_sentence_transformers.json"
    _edit_json(path, lambda c: c | {"prompts": {"query": "query: ", "document": "doc: "}})


def _max_seq_length(folder: Path) -> None:
    _edit_json(folder / "tokenizer_config.json", lambda c: c | {"model_max_length": 64})


def _tokenizer_vocabulary(folder: Path) -> None:
    def rename(tokenizer: Any) -> Any:
        vocab = tokenizer["model"]["vocab"]
        vocab["zzzz"] = vocab.pop("lazy")
        return tokenizer

    _edit_json(folder / "tokenizer.json", rename)


@pytest.mark.parametrize(
    "change",
    [
        _flip_weight_byte,
        _pooling_cls,
        _no_normalize,
        _query_prompt,
        _document_prompt,
        _max_seq_length,
        _tokenizer_vocabulary,
    ],
)
def test_fingerprint_changes_with_what_decides_the_vectors(
    bert: Path, change: Callable[[Path], None]
) -> None:
    before = describe_folder(bert)
    change(bert)
    after = describe_folder(bert)
    assert after.fingerprint != before.fingerprint


def test_fingerprint_changes_with_the_options(bert: Path) -> None:
    base = describe_folder(bert)
    variants = [
        describe_folder(bert, pooling="cls"),
        describe_folder(bert, normalize=False),
        describe_folder(bert, query_prefix=""),
        describe_folder(bert, document_prefix="passage:"),
        describe_folder(bert, max_tokens=95),
        describe_folder(bert, variant="int8"),
        base.with_options(max_tokens=95),
    ]
    fingerprints = {base.fingerprint} | {v.fingerprint for v in variants}
    assert len(fingerprints) == len(variants)  # the two max_tokens=95 records agree
    assert describe_folder(bert, query_prefix="query: ").fingerprint == base.fingerprint


def test_a_conversion_of_another_release_is_recognised(bert: Path, tmp_path: Path) -> None:
    old = describe_folder(bert).as_dict() | {"builder": "bert-g0"}
    record = ModelRecord.from_dict(old)
    with pytest.raises(ModelChanged, match="described for the bert-g0 conversion") as info:
        convert(record, locate(record), tmp_path / "cache")
    _one_line(info)


def test_records_that_are_not_records() -> None:
    good = describe_folder(TINY_MODELS / "mpnet-mean").as_dict()
    with pytest.raises(ModelNotFound, match="unknown fields colour"):
        ModelRecord.from_dict(good | {"colour": "blue"})
    with pytest.raises(ModelNotFound, match="not a model record"):
        ModelRecord.from_dict({k: v for k, v in good.items() if k != "pooling"})
    with pytest.raises(ModelNotFound, match="is not a sha256"):
        ModelRecord.from_dict(good | {"weights_sha256": "abc"})
    with pytest.raises(ConfigurationError, match="between 2 and 256 for mpnet-mean, not 257"):
        ModelRecord.from_dict(good).with_options(max_tokens=257)


# ------------------------------------------------------------------ locate and convert


def test_changed_files_are_refused(bert: Path, tmp_path: Path) -> None:
    record = describe_folder(bert)
    _tokenizer_vocabulary(bert)
    with pytest.raises(ModelChanged, match=r"tokenizer\.json is not the file") as info:
        locate(record)
    assert "describe the model again" in _one_line(info)

    other = tiny_copy("bert-cls", tmp_path / "bert-cls")
    record = describe_folder(other)
    _flip_weight_byte(other)
    located = locate(record)  # converted weights are checked when a graph is built
    with pytest.raises(ModelChanged, match=r"model\.safetensors is not the file") as info:
        convert(record, located, tmp_path / "cache")
    _one_line(info)


def test_a_warm_cache_keeps_serving_the_described_weights(bert: Path, tmp_path: Path) -> None:
    record = describe_folder(bert)
    cache = tmp_path / "cache"
    graph = convert(record, locate(record), cache)
    _flip_weight_byte(bert)
    # Built from the described weights, named by their sha256: still the right graph.
    assert convert(record, locate(record), cache) == graph


def test_graphs_are_cached_by_what_decides_them(tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def name(folder: str, **options: Any) -> str:
        record = describe_folder(TINY_MODELS / folder, **options)
        return convert(record, locate(record), cache).name

    bert = name("bert-mean")
    assert bert.startswith("bert-mean-g1-")
    assert name("bert-mean", query_prefix="x", max_tokens=20) == bert  # the same graph
    assert name("bert-mean", pooling="cls").startswith("bert-mean-g1-cls-")
    assert name("bert-cls").startswith("bert-cls-g1-cls-raw-")
    assert name("mpnet-mean").startswith("mpnet-mean-mpnet-g1-")


def test_int8_is_refused_for_mpnet() -> None:
    with pytest.raises(ConfigurationError, match="not offered for MPNet models") as info:
        describe_folder(TINY_MODELS / "mpnet-mean", variant="int8")
    _one_line(info)
    with pytest.raises(ConfigurationError, match="not offered for MPNet models"):
        describe_folder(TINY_MODELS / "mpnet-mean").with_options(variant="int8")


def test_the_embedder_takes_a_record_or_a_folder(tmp_path: Path) -> None:
    record = describe_folder(TINY_MODELS / "bert-cls")
    with pytest.raises(ConfigurationError, match="a model folder or a record, not both"):
        Embedder(TINY_MODELS / "bert-cls", record=record, cache_dir=tmp_path)
    by_folder = Embedder(TINY_MODELS / "bert-cls", cache_dir=tmp_path)
    by_record = Embedder(record=record, cache_dir=tmp_path, max_tokens=20)
    assert by_folder.record == record
    assert (by_record.max_tokens, by_record.record.max_tokens) == (20, 20)
    assert by_folder.cache_key != by_record.cache_key
    assert by_folder.cache_key == f"bert-cls:48:{record.fingerprint[:16]}"


# ------------------------------------------------------------------ ONNX folders


def test_an_onnx_folder_needs_its_pooling(tmp_path: Path) -> None:
    record = describe_folder(TINY_MODELS / "bert-cls")
    graph = convert(record, locate(record), tmp_path / "cache")
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(graph)
    (folder / "tokenizer.json").symlink_to(TINY_MODELS / "bert-cls" / "tokenizer.json")
    with pytest.raises(ModelNotFound, match="declare its pooling") as info:
        describe_folder(folder)
    _one_line(info)
    declared = describe_folder(folder, pooling="cls", normalize=False, max_tokens=48)
    assert (declared.architecture, declared.builder, declared.dimension) == ("onnx", "onnx", 32)
    assert declared.max_tokens == 48
    assert describe(folder).pooling == "mean"  # the settings path: the old contract
    with pytest.raises(ModelNotFound, match="makes 32-dimensional vectors, not 7"):
        describe_folder(folder, pooling="cls", dimension=7)


# ------------------------------------------------------------------ broken folders


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _write(name: str, content: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / name).write_text(content)

    return write


def _json(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    return lambda folder: _edit_json(folder / name, change)


def _lowercase_mismatch(folder: Path) -> None:
    _edit_json(folder / "sentence_bert_config.json", lambda c: c | {"do_lower_case": True})
    _edit_json(
        folder / "tokenizer.json",
        lambda t: t | {"normalizer": t["normalizer"] | {"lowercase": False}},
    )


def _truncate_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


BROKEN: list[tuple[str, Callable[[Path], None], str]] = [
    ("no tokenizer", _remove("tokenizer.json"), r"holds neither model\.onnx"),
    ("no config", _remove("config.json"), r"holds neither model\.onnx"),
    ("config not JSON", _write("config.json", "{oops"), r"cannot read .*config\.json"),
    ("config a list", _write("config.json", "[]"), "is not a JSON object"),
    (
        "another architecture",
        _json("config.json", lambda c: c | {"model_type": "xlm-roberta"}),
        "describes a 'xlm-roberta' model; only bert and mpnet models",
    ),
    ("another activation", _json("config.json", lambda c: c | {"hidden_act": "relu"}), "relu"),
    ("truncated weights", _truncate_weights, "not a valid safetensors file"),
    ("weights not safetensors", _write("model.safetensors", "nope"), "not a valid safetensors"),
    ("tokenizer not a tokenizer", _write("tokenizer.json", "{}"), r"cannot load .*tokenizer"),
    (
        "a Dense module",
        _json(
            "modules.json",
            lambda m: [*m, {"idx": 3, "name": "3", "path": "3_Dense", "type": "x.Dense"}],
        ),
        "has a Dense module",
    ),
    (
        "modules out of order",
        _json("modules.json", lambda m: [m[1], m[0], m[2]]),
        "expected Transformer, Pooling",
    ),
    (
        "max pooling",
        _json("1_Pooling/config.json", lambda c: c | {"pooling_mode": "max"}),
        "asks for 'max' pooling",
    ),
    (
        "two poolings",
        _json("1_Pooling/config.json", lambda c: c | {"pooling_mode": ["mean", "cls"]}),
        r"asks for \['mean', 'cls'\] pooling",
    ),
    (
        "pooling config missing",
        lambda folder: shutil.rmtree(folder / "1_Pooling"),
        "names a Pooling module without",
    ),
    (
        "another dimension",
        _json("1_Pooling/config.json", lambda c: c | {"embedding_dimension": 64}),
        "Pooling config says 64 dimensions, config.json says 32",
    ),
    (
        "prompt left out of the mean",
        _json("1_Pooling/config.json", lambda c: c | {"include_prompt": False}),
        "include_prompt false",
    ),
    (
        "prompts not strings",
        _json("config_sentence_transformers.json", lambda c: c | {"prompts": {"query": 1}}),
        "prompts must map names to strings",
    ),
    (
        "a bad max_seq_length",
        _write("sentence_bert_config.json", '{"max_seq_length": "long"}'),
        "max_seq_length must be a positive integer",
    ),
    ("lowercasing the tokenizer does not do", _lowercase_mismatch, "does not lowercase"),
]


@pytest.mark.parametrize(("label", "damage", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_folder_is_refused_with_one_line(
    bert: Path, label: str, damage: Callable[[Path], None], message: str
) -> None:
    damage(bert)
    with pytest.raises(ModelNotFound, match=message) as info:
        describe_folder(bert)
    _one_line(info)


def test_folders_that_are_not_there(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist or is not a directory"):
        describe_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match=r"\(found: nothing\)"):
        describe_folder(tmp_path / "empty")


def test_a_supplied_graph_refuses_int8_before_reading_it(tmp_path: Path) -> None:
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"never read")
    (folder / "tokenizer.json").symlink_to(TINY_MODELS / "bert-cls" / "tokenizer.json")
    with pytest.raises(ConfigurationError, match="int8 model variant is only available"):
        describe_folder(folder, pooling="mean", variant="int8")


def test_the_packaged_models_cache_key_is_the_one_earlier_releases_wrote(
    tmp_path: Path,
) -> None:
    """Vectors cached before model records existed stay reusable: all-MiniLM-L6-v2 (no
    prefix, mean-pooled, normalised) keeps its key, a digest of the graph it runs
    (pinned by PACKAGED_ONNX_SHA256) and of its tokenizer.json."""
    assert Embedder(cache_dir=tmp_path).cache_key == "all-MiniLM-L6-v2:256:d54ad06c2a9f3b30"
