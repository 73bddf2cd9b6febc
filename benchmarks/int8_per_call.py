"""The int8 variant the package shipped before per-token scales, rebuilt for comparison.

``indexer.embedding.quantize`` version 1: ONNX Runtime's own dynamic quantizer
(``onnxruntime.quantization.quantize_dynamic``), per-channel int8 weights, 21 of the 24
weight MatMuls (the FFN output projection of layers 0-2 left in fp32), activations
quantized to uint8 with **one scale per model call**.  Only ``benchmarks/int8_quality.py``
uses it: the package no longer builds it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from indexer.embedding.cache import atomic_write

#: What the package called this graph, and the recipe's fp32 nodes.
NAME = "per_call"
FP32_NODES = {("output.dense", 0), ("output.dense", 1), ("output.dense", 2)}
_NODE = re.compile(
    r"^n\d+_encoder\.layer\.(\d+)\."
    r"(attention\.qkv|attention\.output\.dense|intermediate\.dense|output\.dense)\.mm$"
)


class _Chatter(logging.Filter):
    """The quantizer's own root-logger notes (below ERROR) are no news here."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not (noisy and record.levelno < logging.ERROR)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    root = logging.getLogger()
    chatter = _Chatter()
    guard = logging.NullHandler() if not root.handlers else None
    root.addFilter(chatter)
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            root.removeHandler(guard)
        root.removeFilter(chatter)


def _nodes(fp32_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(fp32_path), load_external_data=False)
    names = []
    for node in model.graph.node:
        match = _NODE.match(node.name)
        kept = match is not None and (match.group(2), int(match.group(1))) in FP32_NODES
        if match and node.op_type == "MatMul" and not kept:
            names.append(node.name)
    return names


def per_call_graph(fp32_path: Path, cache_dir: Path) -> Path:
    """The per-call int8 graph of ``fp32_path``, built once into ``cache_dir``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = cache_dir / f"{fp32_path.stem}.{NAME}.onnx"
    if target.is_file():
        return target
    nodes = _nodes(fp32_path)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".per-call-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_path.read_bytes())
        with _quiet():
            quantize_dynamic(
                src,
                dst,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                reduce_range=False,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
            )
        atomic_write(target, dst.read_bytes(), cache_dir)
    return target
