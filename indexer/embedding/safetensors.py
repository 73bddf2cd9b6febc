"""Reading ``model.safetensors`` with plain numpy, so the product needs no PyTorch.

The format is simple enough to parse here: an 8-byte little-endian header length, a
JSON header naming each tensor's dtype, shape and byte range, then the raw data.
Tensors are views into the file's bytes (no copy); every offset is checked first, so
a damaged file is a :class:`~indexer.exceptions.ModelNotFound`, never a crash.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.exceptions import ModelNotFound

__all__ = ["check_safetensors_file", "read_safetensors_bytes"]

_HEADER_LENGTH_BYTES = 8
_DTYPES: Mapping[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors_bytes(
    data: bytes, *, source: Path | str = "model.safetensors"
) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a safetensors file's bytes, by name (``__metadata__`` skipped)."""
    header_len = _header_length(data[:_HEADER_LENGTH_BYTES], len(data), source)
    base = _HEADER_LENGTH_BYTES + header_len
    tensors: dict[str, npt.NDArray[Any]] = {}
    for key, dtype, shape, start in _entries(
        data[_HEADER_LENGTH_BYTES:base], len(data) - base, source
    ):
        count = int(np.prod(shape, dtype=np.int64))
        tensors[key] = np.frombuffer(data, dtype=dtype, count=count, offset=base + start).reshape(
            shape
        )
    return tensors


def check_safetensors_file(path: Path) -> None:
    """Refuse (:class:`ModelNotFound`, one line) a file that is not a whole safetensors
    file, reading only its header: a truncated or foreign file is caught before anyone
    builds from it."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            header_len = _header_length(fh.read(_HEADER_LENGTH_BYTES), size, path)
            header = fh.read(header_len)
    except OSError as exc:
        raise ModelNotFound(f"cannot read {path}: {exc.strerror or exc}") from exc
    for _ in _entries(header, size - _HEADER_LENGTH_BYTES - header_len, path):
        pass


def _bad(source: Path | str, why: str) -> ModelNotFound:
    return ModelNotFound(f"{source} is not a valid safetensors file: {why}")


def _header_length(first: bytes, size: int, source: Path | str) -> int:
    if len(first) < _HEADER_LENGTH_BYTES:
        raise _bad(source, "too short")
    (header_len,) = struct.unpack("<Q", first)
    if header_len > size - _HEADER_LENGTH_BYTES:
        raise _bad(source, "header length beyond end of file")
    return int(header_len)


def _entries(
    header_bytes: bytes, data_size: int, source: Path | str
) -> Iterator[tuple[str, np.dtype[Any], tuple[int, ...], int]]:
    """Each tensor's name, dtype, shape and start in the data, every offset checked
    against ``data_size`` (the bytes after the header)."""
    try:
        header = json.loads(header_bytes)
    except ValueError as exc:
        raise _bad(source, f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _bad(source, "header is not a JSON object")
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(source, f"tensor {key!r} has an unsupported or malformed entry") from exc
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= start <= end <= data_size or end - start != count * dtype.itemsize:
            raise _bad(source, f"tensor {key!r} has inconsistent offsets")
        yield key, dtype, shape, start
