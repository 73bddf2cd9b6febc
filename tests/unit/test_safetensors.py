"""Reading safetensors with numpy: the packaged weights, and every malformed file refused."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from indexer.embedding.safetensors import read_safetensors_bytes
from indexer.exceptions import ModelNotFound

from .embedding_helpers import DIM, package_dir


def _encode(header: Any, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def _file(*arrays: tuple[str, str, np.ndarray[Any, Any]]) -> bytes:
    """A safetensors file of ``(name, dtype code, array)``, with a metadata entry."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, code, array in arrays:
        raw = array.tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    return _encode(header, data)


def test_reads_the_packaged_weights() -> None:
    tensors = read_safetensors_bytes((package_dir() / "model.safetensors").read_bytes())
    words = tensors["embeddings.word_embeddings.weight"]
    assert words.dtype == np.float32
    assert words.shape == (30522, DIM)
    assert tensors["encoder.layer.5.output.dense.weight"].shape == (DIM, 4 * DIM)
    assert np.isfinite(words).all()


def test_round_trips_every_dtype_and_skips_metadata() -> None:
    arrays = [
        ("f64", "F64", np.arange(6, dtype="<f8").reshape(2, 3)),
        ("f32", "F32", np.linspace(-1, 1, 4, dtype="<f4")),
        ("f16", "F16", np.array([0.5, -2.0], dtype="<f2")),
        ("i64", "I64", np.array([-(2**40), 7], dtype="<i8")),
        ("i32", "I32", np.array([[1], [-2]], dtype="<i4")),
        ("i16", "I16", np.array([3], dtype="<i2")),
        ("i8", "I8", np.array([-5, 5], dtype="i1")),
        ("u8", "U8", np.array([250], dtype="u1")),
        ("bool", "BOOL", np.array([True, False, True])),
        ("scalar", "F32", np.array(1.5, dtype="<f4")),
        ("empty", "F32", np.zeros((0, 4), dtype="<f4")),
    ]
    tensors = read_safetensors_bytes(_file(*arrays))
    assert set(tensors) == {name for name, _, _ in arrays}
    for name, _, array in arrays:
        assert tensors[name].dtype == array.dtype
        np.testing.assert_array_equal(tensors[name], array)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x00", "too short"),
        (struct.pack("<Q", 1000) + b"{}", "header length beyond end of file"),
        (struct.pack("<Q", 3) + b"{x}", "header is not JSON"),
        (_encode([], b""), "header is not a JSON object"),
        (
            _encode({"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
            "'t' has an unsupported or malformed entry",
        ),
        (_encode({"t": {"dtype": "F32", "shape": [1]}}, bytes(4)), "malformed entry"),
        (
            _encode({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)),
            "'t' has inconsistent offsets",
        ),
        (
            _encode({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)),
            "'t' has inconsistent offsets",
        ),
        (
            _encode({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, bytes(4)),
            "inconsistent offsets",
        ),
    ],
)
def test_malformed_files_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(
        ModelNotFound, match=r"weights\.bin is not a valid safetensors file"
    ) as info:
        read_safetensors_bytes(data, source="weights.bin")
    assert why in str(info.value)
