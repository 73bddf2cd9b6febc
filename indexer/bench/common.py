"""What every section shares: the seed, medians and paired ratios, timing, quiet logs.

Every figure is the median of several runs; two things timed side by side are compared
run by run (:func:`paired_ratio`), so load that drifts during the bench cancels out.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: One seed for the corpus, the search vectors and the latency pauses: runs on the
#: same machine measure the same work.
SEED = 20261123
#: all-MiniLM-L6-v2's vector size.
DIM = 384
TOP_K = 10
ONE_MB = 1_000_000

Floats = npt.NDArray[np.float32]


def say(message: str) -> None:
    """Progress on stderr: stdout carries only the report."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median of run-by-run ratios of runs made side by side (robust to drifting load)."""
    return median([s / f for s, f in zip(slow, fast, strict=True)])


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def normalise(x: npt.NDArray[Any]) -> Floats:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: Floats = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def cosines(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> Floats:
    """Row-by-row cosine of two sets of vectors (normalised here: the reference's are not)."""
    out: Floats = np.sum(normalise(a) * normalise(b), axis=1)
    return out


def throughput(texts: int, tokens: int, seconds: float) -> dict[str, float]:
    """The figures quoted for every model run: time, texts and tokens per second."""
    return {
        "seconds": round(seconds, 3),
        "texts_per_s": round(texts / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 0),
    }


@contextlib.contextmanager
def quiet(logger_name: str) -> Iterator[None]:
    """The worker logs one INFO line per batch; the bench prints its own figures."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        yield
    finally:
        logger.setLevel(level)
