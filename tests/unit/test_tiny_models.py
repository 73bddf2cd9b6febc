"""Golden vectors of tiny random models, one per kind of graph the indexer builds.

``tests/fixtures/models/`` holds three sentence-transformers folders (BERT with mean
pooling and e5-style prompts, BERT with CLS pooling, a long query prompt and no
Normalize module, MPNet with mean pooling) and sentence-transformers' own vectors for
each text, as a query and as a document.  The indexer must reproduce every one from
the folder alone, with no PyTorch.  The weights are random and large on purpose: a
wrong bucket, position or pooling moves the vectors far (the last tests prove it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from tokenizers import Tokenizer

from indexer.embedding import Embedder
from indexer.embedding.describe import ModelRecord, describe_folder
from indexer.embedding.mpnet import build_onnx as build_mpnet
from indexer.embedding.mpnet import relative_position_buckets
from indexer.embedding.safetensors import read_safetensors_bytes

from .embedding_helpers import TINY_MODELS, TINY_NAMES, tiny_reference

#: The bar for every text of every kind: sentence-transformers (PyTorch) vs ONNX Runtime.
MIN_COSINE = 0.99999
KINDS = ("query", "document")

Matrix = npt.NDArray[np.float64]


def cosines(a: npt.ArrayLike, b: npt.ArrayLike) -> Matrix:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out: Matrix = (x * y).sum(axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    return out


@pytest.fixture(scope="module")
def embedders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Embedder]:
    cache = tmp_path_factory.mktemp("tiny-cache")
    return {
        name: Embedder(record=describe_folder(TINY_MODELS / name), cache_dir=cache)
        for name in TINY_NAMES
    }


def _embed(embedder: Embedder, kind: str, texts: list[str]) -> npt.NDArray[np.float32]:
    return embedder.embed_queries(texts) if kind == "query" else embedder.embed(texts)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", TINY_NAMES)
def test_matches_sentence_transformers(
    embedders: dict[str, Embedder], name: str, kind: str
) -> None:
    reference = tiny_reference(name)
    items = reference["items"]
    expected = np.asarray([item[kind] for item in items], np.float64)
    vectors = _embed(embedders[name], kind, [item["text"] for item in items])
    found = cosines(vectors, expected)
    worst = int(found.argmin())
    assert found.min() >= MIN_COSINE, f"{items[worst]['label']}: cosine {found[worst]:.9f}"
    # Lengths too: the CLS model has no Normalize module, so neither are ours normalised.
    np.testing.assert_allclose(
        np.linalg.norm(vectors, axis=1), np.linalg.norm(expected, axis=1), rtol=1e-4
    )


@pytest.mark.parametrize("name", TINY_NAMES)
def test_one_text_at_a_time_gives_the_same_vectors(
    embedders: dict[str, Embedder], name: str
) -> None:
    texts = [item["text"] for item in tiny_reference(name)["items"]]
    together = embedders[name].embed(texts)
    alone = np.concatenate([embedders[name].embed([text]) for text in texts])
    np.testing.assert_allclose(alone, together, atol=2e-5, rtol=1e-5)


def test_the_fixtures_cover_what_they_claim() -> None:
    for name in TINY_NAMES:
        reference = tiny_reference(name)
        record = describe_folder(TINY_MODELS / name)
        assert record.max_tokens == reference["max_seq_length"]
        assert (record.query_prefix, record.document_prefix) == (
            reference["query_prefix"],
            reference["document_prefix"],
        )
        # The last texts run far past max tokens (truncation is part of the test).
        assert len(reference["items"][-1]["text"].split()) > 2 * record.max_tokens


# ------------------------------------------------------------------ what each folder says


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "bert-mean",
            {
                "architecture": "bert",
                "builder": "bert-g1",
                "pooling": "mean",
                "normalize": True,
                "query_prefix": "query: ",
                "document_prefix": "passage: ",  # e5's key, not "document"
                "max_tokens": 96,
                "dimension": 32,
            },
        ),
        (
            "bert-cls",
            {
                "architecture": "bert",
                "pooling": "cls",
                "normalize": False,  # no Normalize module in modules.json
                "query_prefix": "Represent this sentence for searching relevant passages: ",
                "document_prefix": "",
                "max_tokens": 48,
            },
        ),
        (
            "mpnet-mean",
            {
                "architecture": "mpnet",
                "builder": "mpnet-g1",
                "pooling": "mean",
                "normalize": True,
                "query_prefix": "",
                "document_prefix": "",
                "max_tokens": 200,
                "max_positions": 256,  # 258 rows, less the padding row and the one before
            },
        ),
    ],
)
def test_describe_reads_the_folder(name: str, expected: dict[str, Any]) -> None:
    record = describe_folder(TINY_MODELS / name)
    assert {key: getattr(record, key) for key in expected} == expected
    assert record.name == name
    assert record.source == str(TINY_MODELS / name)


# ------------------------------------------------------------------ prefixes


def test_query_and_document_prefixes_are_applied(embedders: dict[str, Embedder]) -> None:
    bert = embedders["bert-mean"]
    texts = ["How do I reset my password?", ""]
    queries = bert.tokenize(texts, query=True)
    documents = bert.tokenize(texts)
    assert queries.texts == documents.texts == tuple(texts)  # the prefix is not part of it
    tokenizer = Tokenizer.from_file(str(TINY_MODELS / "bert-mean" / "tokenizer.json"))
    for text, query, document in zip(texts, queries.ids, documents.ids, strict=True):
        assert query == tuple(tokenizer.encode("query: " + text).ids)
        assert document == tuple(tokenizer.encode("passage: " + text).ids)
    assert bert.count_tokens(texts) == documents.lengths
    cls = embedders["bert-cls"]  # a query prefix, no document prefix
    prefix = cls.record.query_prefix
    np.testing.assert_array_equal(cls.embed_queries(texts), cls.embed([prefix + t for t in texts]))
    assert not np.allclose(cls.embed_queries(texts[:1]), cls.embed(texts[:1]), atol=1e-3)


def test_prefixes_given_by_the_caller_win() -> None:
    record = describe_folder(TINY_MODELS / "mpnet-mean", query_prefix="search: ")
    assert (record.query_prefix, record.document_prefix) == ("search: ", "")
    assert record.fingerprint != describe_folder(TINY_MODELS / "mpnet-mean").fingerprint


def test_max_chars_cuts_the_text_not_the_prefix(
    tmp_path: Path, embedders: dict[str, Embedder]
) -> None:
    record = describe_folder(TINY_MODELS / "bert-cls")
    short = Embedder(record=record, cache_dir=tmp_path, max_chars=4)
    assert short.tokenize(["password"], query=True).texts == ("pass",)
    whole = embedders["bert-cls"]
    np.testing.assert_array_equal(short.embed_queries(["password"]), whole.embed_queries(["pass"]))


# ------------------------------------------------------------------ the tests can fail


def _mpnet_without(tmp_path: Path, change: str, record: ModelRecord) -> Embedder:
    """The tiny MPNet built with one part of its graph changed (no relative position
    bias, or CLS pooling), as a supplied ONNX folder with the same tokenizer."""
    folder = TINY_MODELS / "mpnet-mean"
    tensors = dict(read_safetensors_bytes((folder / "model.safetensors").read_bytes()))
    config = json.loads((folder / "config.json").read_text())
    if change == "relative_bias":
        key = "encoder.relative_attention_bias.weight"
        tensors[key] = np.zeros_like(tensors[key])
    graph = build_mpnet(tensors, config, pooling="cls" if change == "pooling" else "mean")
    target = tmp_path / change
    target.mkdir()
    (target / "model.onnx").write_bytes(graph)
    (target / "tokenizer.json").symlink_to(folder / "tokenizer.json")
    changed = describe_folder(target, pooling="mean", max_tokens=record.max_tokens)
    return Embedder(record=changed, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("change", ["relative_bias", "pooling"])
def test_a_wrong_graph_would_fail_the_golden_test(
    tmp_path: Path, embedders: dict[str, Embedder], change: str
) -> None:
    reference = tiny_reference("mpnet-mean")
    texts = [item["text"] for item in reference["items"]]
    expected = [item["document"] for item in reference["items"]]
    wrong = _mpnet_without(tmp_path, change, embedders["mpnet-mean"].record)
    assert cosines(wrong.embed(texts), expected).min() < 0.999


def test_relative_position_buckets_are_hugging_faces() -> None:
    # MPNetEncoder.relative_position_bucket (transformers 5.25) on these distances.
    expected = {
        -1000: 15, -129: 15, -128: 15, -127: 15, -91: 15, -90: 14, -64: 14, -63: 13,
        -46: 13, -45: 12, -32: 12, -31: 11, -23: 11, -22: 10, -16: 10, -15: 9, -12: 9,
        -11: 8, -8: 8, -7: 7, -1: 1, 0: 0, 1: 17, 7: 23, 8: 24, 11: 24, 12: 25, 15: 25,
        16: 26, 22: 26, 23: 27, 31: 27, 32: 28, 45: 28, 46: 29, 63: 29, 64: 30, 90: 30,
        91: 31, 127: 31, 128: 31, 129: 31, 1000: 31,
    }  # fmt: skip
    found = relative_position_buckets(np.asarray(list(expected), np.int64))
    assert dict(zip(expected, found.tolist(), strict=True)) == expected
