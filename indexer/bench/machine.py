"""What the figures depend on: the CPU, the fp32 GEMM peak, the library versions.

The GEMM peak is the yardstick of the model section: all-MiniLM-L6-v2 is nearly all
matrix products, so a model run cannot beat its runtime's own fp32 GEMM rate, and its
share of that rate says how much is left to gain.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.bench.common import SEED, timed
from indexer.bench.scratch import one
from indexer.db import connect as db

HIDDEN, INTERMEDIATE, LAYERS = 384, 1536, 6  # all-MiniLM-L6-v2, for the FLOP count
#: Rows of the GEMM yardstick: large enough that threads, not overheads, decide it.
GEMM_ROWS = 4096
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo (empty elsewhere)."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


def _ram_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def loadavg() -> float | None:
    """Other work on the machine skews every figure: the report says how busy it was."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}",
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "simd": " ".join(sorted(f for f in flags if f in SIMD_FLAGS)),
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
    }


def gemm_peak_gflops(threads: int) -> float:
    """fp32 GEMM rate of ONNX Runtime here (one MatMul of the model's FFN shape), best of 7."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = GEMM_ROWS, HIDDEN, INTERMEDIATE
    rng = np.random.default_rng(SEED)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        initializer=[numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {"x": rng.standard_normal((m, k), dtype=np.float32)}
    session.run(None, feed)
    best = min(timed(lambda: session.run(None, feed)) for _ in range(7))
    return 2 * m * k * n / best / 1e9


def torch_gemm_peak_gflops() -> float:
    """The same yardstick as :func:`gemm_peak_gflops`, for PyTorch (the reference)."""
    import torch

    a = torch.randn(GEMM_ROWS, HIDDEN)
    b = torch.randn(HIDDEN, INTERMEDIATE)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b)) for _ in range(7))
    return 2 * GEMM_ROWS * HIDDEN * INTERMEDIATE / best / 1e9


def model_gflop(lengths: Sequence[int]) -> float:
    """Useful work of all-MiniLM-L6-v2 on texts of these token counts (no padding)."""
    per_token = 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * INTERMEDIATE)  # Q, K, V, O, FFN
    total = sum(LAYERS * (per_token * n + 4 * n * n * HIDDEN) for n in lengths)
    return total / 1e9


def versions(conn: db.Connection) -> dict[str, Any]:
    import onnxruntime
    import psycopg
    import tokenizers

    return {
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "psycopg": psycopg.__version__,
        "postgresql": one(conn, "SHOW server_version"),
        "pgvector": one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
        "shared_buffers": one(conn, "SHOW shared_buffers"),
    }
