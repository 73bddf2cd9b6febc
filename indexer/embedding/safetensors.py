"""Reading ``model.safetensors`` with plain numpy, so the product needs no PyTorch.

The format is simple enough to parse here: an 8-byte little-endian header length, a
JSON header naming each tensor's dtype, shape and byte range, then the raw data.
Tensors are views into the file's bytes (no copy); every offset is checked first, so
a damaged file is a :class:`~indexer.exceptions.ModelNotFound`, never a crash.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.exceptions import ModelNotFound

__all__ = ["read_safetensors_bytes"]

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

    def bad(why: str) -> ModelNotFound:
        return ModelNotFound(f"{source} is not a valid safetensors file: {why}")

    if len(data) < _HEADER_LENGTH_BYTES:
        raise bad("too short")
    (header_len,) = struct.unpack("<Q", data[:_HEADER_LENGTH_BYTES])
    if header_len > len(data) - _HEADER_LENGTH_BYTES:
        raise bad("header length beyond end of file")
    try:
        header = json.loads(data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_len])
    except ValueError as exc:
        raise bad(f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    base = _HEADER_LENGTH_BYTES + header_len
    tensors: dict[str, npt.NDArray[Any]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {key!r} has an unsupported or malformed entry") from exc
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= start <= end <= len(data) - base or end - start != count * dtype.itemsize:
            raise bad(f"tensor {key!r} has inconsistent offsets")
        tensors[key] = np.frombuffer(data, dtype=dtype, count=count, offset=base + start).reshape(
            shape
        )
    return tensors
