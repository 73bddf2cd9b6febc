"""Where the model's time goes: ONNX Runtime's per-operator profile on the bench corpus.

    .venv/bin/python benchmarks/profile_model.py [--mixed 64] [--short 256] [--threads N]

Runs the daemon's ONNX graph (the cached conversion of the packaged all-MiniLM-L6-v2)
on the same deterministic corpus as `indexer bench`, batched the way the embedder
batches (sorted by length, padded per batch, ``plan_calls`` under the token budget),
and prints, per text kind: throughput, useful GFLOP/s against this machine's measured
fp32 GEMM peak, and the share of time of each operator type.  A diagnostic for the
model target of `indexer bench`; not used by the package.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from indexer.bench.corpus import build_corpus
from indexer.bench.machine import gemm_peak_gflops, model_gflop
from indexer.embedding import plan_calls
from indexer.embedding.resolve import resolve_model
from indexer.settings import Settings, default_model_cache

Feed = dict[str, npt.NDArray[np.int64]]


def feeds(tokenizer: Tokenizer, texts: list[str], token_budget: int) -> tuple[list[Feed], int]:
    """Model inputs batched as the embedder batches them; and the padded token count."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
    lengths = [len(e.ids) for e in encodings]
    out: list[Feed] = []
    padded = 0
    for batch in plan_calls(lengths, token_budget):
        width = max(lengths[i] for i in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, index in enumerate(batch):
            ids[row, : lengths[index]] = encodings[index].ids
            mask[row, : lengths[index]] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
        padded += ids.size
    return out, padded


def session(path: Path, threads: int, *, profile: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_shares(profile_path: str) -> list[tuple[str, float, int]]:
    """(operator type, milliseconds, calls) from an ONNX Runtime profile, slowest first."""
    with open(profile_path) as handle:
        events: list[dict[str, Any]] = json.load(handle)
    os.remove(profile_path)
    micros: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            op = str(event.get("args", {}).get("op_name", "?"))
            micros[op] += int(event["dur"])
            calls[op] += 1
    return [(op, us / 1000, calls[op]) for op, us in micros.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=256)
    parser.add_argument("--mixed", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--token-budget", type=int, default=Settings().token_budget, help="default: the daemon's"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    files = resolve_model(None, Path(os.environ.get("INDEXER_MODEL_CACHE", default_model_cache())))
    tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.no_padding()

    def count_tokens(texts: Any) -> list[int]:
        return [len(e.ids) for e in tokenizer.encode_batch(list(texts))]

    corpus = build_corpus(count_tokens, args.short, args.mixed, 0)
    peak = gemm_peak_gflops(args.threads)
    print(f"fp32 GEMM peak (onnxruntime, {args.threads} threads): {peak:.0f} GFLOP/s")
    timed = session(files.onnx_path, args.threads, profile=False)
    for kind, texts in (("short", corpus.short), ("mixed", corpus.mixed)):
        batches, padded = feeds(tokenizer, texts, args.token_budget)
        lengths = count_tokens(texts)
        timed.run(None, batches[0])
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for feed in batches:
                timed.run(None, feed)
            best = min(best, time.perf_counter() - start)
        useful = model_gflop(lengths) / best
        print(
            f"\n{kind}: {len(texts)} texts, {sum(lengths)} tokens ({padded} padded) in "
            f"{len(batches)} batches: {len(texts) / best:.1f} texts/s, {useful:.0f} useful "
            f"GFLOP/s = {useful / peak:.0%} of the GEMM peak (best of {args.repeats})"
        )
        profiled = session(files.onnx_path, args.threads, profile=True)
        for feed in batches:
            profiled.run(None, feed)
        shares = op_shares(profiled.end_profiling())
        total = sum(ms for _, ms, _ in shares)
        for op, ms, calls in shares[:10]:
            print(f"  {op:<28} {ms:9.1f} ms  {ms / total:6.1%}  ({calls} calls)")


if __name__ == "__main__":
    main()
