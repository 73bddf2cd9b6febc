"""Speed, quality and batch independence of int8 variants of the model against fp32.

    .venv/bin/python benchmarks/int8_quality.py [--repeats 5] [--configs per_token,per_call]
        [--cpu-time] [--quality] [--documents 500]

Each config is an int8 graph of the packaged model: a per-token recipe
(:class:`indexer.embedding.quantize.Recipe`, built the way the package builds it), or
``per_call``, the variant the package shipped before (one activation scale per model
call; rebuilt by ``benchmarks/int8_per_call.py``).  Every graph runs through the
daemon's own :class:`~indexer.embedding.Embedder` (same model calls, same session
options), and gets one row:

* texts/s on short lines and on ~1 KB mixed chunks (about 200 tokens), and the ratio to
  fp32.  Runs are interleaved fp32, A, fp32, B, fp32, ...; each run of a config is
  divided by the mean of the fp32 runs just before and after it, and the median of
  those ratios over ``--repeats`` rounds is printed, so a load that drifts (other work
  sharing the cores) cancels out as far as it can.  ``--cpu-time`` runs every session
  on one thread and times the thread's CPU time instead of the wall clock: on a shared
  machine that measures the work, not the queue for the cores;
* the min and median cosine of its vectors to the fp32 vectors (corpus and queries), and
  the min over :data:`TINY_TEXTS` (one-word queries, a rule of underscores);
* batch independence: 100 texts of the corpus embedded alone, then in shuffled batches
  of 8 and of 64 (each one model call, padded to its longest text); the largest
  absolute difference between two vectors of the same text;
* top-10 neighbour overlap with fp32 (queries against the corpus).

The corpus is ``indexer.bench.corpus.build_corpus(count_tokens, 2000, 256, 200)``: lines
and chunks of the Python standard library's source, deterministic.  ``--quality`` adds
retrieval on the project's quality corpus (``benchmarks/chunking_quality.py``: man pages
and the Python documentation topics, each query's relevant document the one it came
from): recall@1 and @10 for its summary, purpose and deep query sets, with each
document one row and with its 128:16 chunks (a document scored by its best chunk).
Graphs and vectors are cached in ``--cache-dir``.  A tool for people, not part of CI;
not used by the package.

Measured on 2 cores of an Intel Xeon (family/model 6/167, AVX-512 VNNI), onnxruntime
1.32.0, with other engineers' test suites sharing the cores (load average 2-5), one run:
``--repeats 5 --configs per_call,per_token,no_smoothing,symmetric_gelu,plain,plain_3_fp32
--quality``, then ``--cpu-time --repeats 5`` for the second speed column of each kind
(x fp32 in wall clock / in one thread's CPU time; fp32 ran 712 short and 50 mixed
texts/s on the wall clock):

    config          MatMuls  short x fp32  mixed x fp32  cos min  median   tiny    batch diff  top10
    per_call             21   1.67 / 1.63   1.42 / 1.50   0.9891  0.99567  0.9720  0.03        0.886
    per_token (shipped)  24   2.10 / 2.43   1.81 / 2.01   0.9973  0.99905  0.9915  0           0.951
    no_smoothing         24   2.14 / 2.59   1.87 / 2.08   0.9937  0.99776  0.9794  0           0.937
    symmetric_gelu       24   2.05 / -      1.85 / -      0.9971  0.99878  0.9899  0           0.944
    plain                24   2.15 / -      1.93 / -      0.9934  0.99753  0.9817  0           0.923
    plain_3_fp32         21   1.84 / 2.05   1.66 / 1.85   0.9959  0.99861  0.9886  0           0.939

(fp32's batch diff: 1.2e-07.  ``tiny``: the lowest cosine over :data:`TINY_TEXTS`, measured
in a later ``--no-timing`` run; per_token's lowest are "!" 0.9915, "ok" 0.9938, "?" 0.9942.)

Quality corpus, 578 documents (5,826 chunks), 578 summary,
464 purpose and 363 deep queries, recall@1 / recall@10 in percent; the last column is the
lowest cosine to fp32 over all its 7,809 texts (per_token's: a line of 128 underscores):

    config     documents as  summary      purpose      deep         cos min
    fp32       one row       94.3 / 99.7  88.6 / 98.9  34.2 / 59.2  1
    fp32       best chunk    96.4 / 100   93.3 / 99.4  74.4 / 92.8
    per_call   one row       94.1 / 99.7  89.4 / 98.9  35.0 / 59.5  0.9889
    per_call   best chunk    96.4 / 100   92.5 / 99.4  74.7 / 92.6
    per_token  one row       94.1 / 99.7  88.4 / 98.9  34.2 / 59.0  0.9951
    per_token  best chunk    96.4 / 100   93.3 / 99.4  73.6 / 93.1
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_per_call import per_call_graph

from indexer.bench.corpus import build_corpus
from indexer.embedding import Embedder
from indexer.embedding.quantize import SHIPPED_RECIPE, Recipe, quantized_onnx_path
from indexer.embedding.resolve import resolve_model

Floats = npt.NDArray[np.float32]
TOP_K = 10
ROOT = Path(__file__).resolve().parent.parent
FP32 = "fp32"
PER_CALL = "per_call"
BATCH_TEXTS = 100
BATCH_SIZES = (8, 64)
#: Inputs shorter than any line of the corpus (1-3 tokens between [CLS] and [SEP]), and
#: runs of one character (a man page's rule of underscores): a vector made of few
#: distinct tokens has no other tokens to average its rounding errors with.
TINY_TEXTS = (
    "ok", "?", "!", "x", "a", "42", "yes", "no", "db", "ls", "git", "foo", "error",
    "python", "how to", "api key", "sql join", "hello world", "_" * 10, "=" * 200,
)  # fmt: skip

#: The per-token recipes compared (names are what --configs takes).
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        SHIPPED_RECIPE,  # per_token: all 24, smoothing 0.5, GELU zero point 16
        Recipe("no_smoothing", smoothing_alpha=None),
        Recipe("symmetric_gelu", gelu_zero_point=128),
        Recipe("plain", smoothing_alpha=None, gelu_zero_point=128),
        Recipe(
            "plain_3_fp32",
            smoothing_alpha=None,
            gelu_zero_point=128,
            fp32_nodes=(("qkv", 4), ("qkv", 5), ("ffn_in", 4)),
        ),
        Recipe("smoothing_0_4", smoothing_alpha=0.4),
        Recipe("smoothing_0_6", smoothing_alpha=0.6),
        Recipe("gelu_zero_point_24", gelu_zero_point=24),
    )
}
DEFAULT_CONFIGS = (PER_CALL, SHIPPED_RECIPE.name, "no_smoothing", "plain", "plain_3_fp32")


@dataclass
class Row:
    """One variant: its embedder, its vectors, and its timings per round."""

    name: str
    embedder: Embedder
    nodes: str
    #: The model folder the embedder loads (None: the packaged fp32 model).
    folder: Path | None = None
    corpus: Floats = field(default_factory=lambda: np.empty((0, 0), np.float32))
    queries: Floats = field(default_factory=lambda: np.empty((0, 0), np.float32))
    tiny: Floats = field(default_factory=lambda: np.empty((0, 0), np.float32))
    batch_diff: float = float("nan")
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"short": [], "mixed": []})
    ratios: dict[str, list[float]] = field(default_factory=lambda: {"short": [], "mixed": []})


def _say(message: str) -> None:
    print(f"int8: {message}", file=sys.stderr, flush=True)


def _linked_folder(parent: Path, name: str, onnx_path: Path, tokenizer: Path) -> Path:
    """A model folder (model.onnx + tokenizer.json) the Embedder loads as is."""
    folder = parent / name
    folder.mkdir()
    (folder / "model.onnx").symlink_to(onnx_path.resolve())
    (folder / "tokenizer.json").symlink_to(tokenizer.resolve())
    return folder


def _count_quantized(path: Path) -> str:
    import onnx

    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    return str(sum(ops.count(op) for op in ("MatMulInteger", "MatMulIntegerToFloat")))


def _clock(cpu_time: bool) -> Callable[[], float]:
    return time.thread_time if cpu_time else time.perf_counter


def _measure(
    rows: Sequence[Row], texts: dict[str, list[str]], repeats: int, reference: Row, cpu: bool
) -> None:
    """Interleaved timing: fp32, A, fp32, B, ..., fp32, per round and per text kind."""
    clock = _clock(cpu)

    def timed(fn: Callable[[], object]) -> float:
        start = clock()
        fn()
        return clock() - start

    for round_number in range(1, repeats + 1):
        for kind, batch in texts.items():
            fp32 = functools.partial(reference.embedder.embed, batch)
            before = timed(fp32)
            reference.seconds[kind].append(before)
            for row in rows:
                took = timed(functools.partial(row.embedder.embed, batch))
                after = timed(fp32)
                reference.seconds[kind].append(after)
                row.seconds[kind].append(took)
                row.ratios[kind].append((before + after) / 2 / took)
                before = after
        _say(f"timing round {round_number}/{repeats} done")


def batch_difference(embedder: Embedder, texts: Sequence[str]) -> float:
    """Largest ``|a - b|`` between a text's vector alone and in shuffled batches.

    ``embedder`` must run each batch as one model call (a large token budget).
    """
    alone = np.stack([embedder.embed([text])[0] for text in texts])
    rng = random.Random(20261204)
    worst = 0.0
    for size in BATCH_SIZES:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order), size):
            chosen = order[start : start + size]
            batched = embedder.embed([texts[i] for i in chosen])
            worst = max(worst, float(np.abs(batched - alone[chosen]).max()))
    return worst


def _arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The parsed command line, and the configs it asks for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    known = [PER_CALL, *RECIPES]
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated configs (default: %(default)s; known: {', '.join(known)})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (default 3)")
    parser.add_argument("--short", type=int, default=2000, help="short lines (default 2000)")
    parser.add_argument("--mixed", type=int, default=256, help="~1 KB chunks (default 256)")
    parser.add_argument("--queries", type=int, default=200, help="queries (default 200)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument("--token-budget", type=int, default=2048, help="as the daemon's")
    parser.add_argument(
        "--cpu-time", action="store_true", help="one thread each, timed in thread CPU time"
    )
    parser.add_argument(
        "--quality", action="store_true", help="also recall@1/@10 on the quality corpus"
    )
    parser.add_argument("--documents", type=int, default=500, help="man pages (--quality)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=ROOT / ".tmp" / "int8-bench",
        help="where the graphs and vectors are cached (default .tmp/int8-bench)",
    )
    parser.add_argument("--no-timing", action="store_true", help="quality columns only")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or args.repeats < 1:
        parser.error(f"unknown config(s) {', '.join(unknown)}" if unknown else "--repeats >= 1")
    if args.cpu_time:
        args.threads = 1
    return args, names


def _graph(name: str, fp32_path: Path, cache_dir: Path) -> Path:
    if name == PER_CALL:
        return per_call_graph(fp32_path, cache_dir)
    return quantized_onnx_path(fp32_path, cache_dir, RECIPES[name])


def _rows(args: argparse.Namespace, names: Sequence[str], folders: Path) -> tuple[Row, list[Row]]:
    """The fp32 reference, then one row per config (graphs built if needed)."""
    cache_dir: Path = args.cache_dir
    fp32_files = resolve_model(None, cache_dir)

    def embedder(folder: Path | None) -> Embedder:
        return Embedder(
            folder, cache_dir=cache_dir, threads=args.threads, token_budget=args.token_budget
        )

    reference = Row(FP32, embedder(None), "0", None)
    rows = []
    for name in names:
        started = time.perf_counter()
        path = _graph(name, fp32_files.onnx_path, cache_dir)
        _say(f"{name}: {path.name} ({time.perf_counter() - started:.1f} s)")
        folder = _linked_folder(folders, name, path, fp32_files.tokenizer_path)
        rows.append(Row(name, embedder(folder), _count_quantized(path), folder))
    return reference, rows


def _one_call_each(row: Row, args: argparse.Namespace) -> Embedder:
    """The row's graph again, with a budget that makes every batch one model call."""
    return Embedder(
        row.folder, cache_dir=args.cache_dir, threads=args.threads, token_budget=1 << 20
    )


def _top_k(queries: Floats, corpus: Floats, k: int = TOP_K) -> npt.NDArray[np.int64]:
    order: npt.NDArray[np.int64] = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :k]
    return order


def _overlap(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    """Mean share of each row of ``truth`` that is in the same row of ``found``."""
    pairs = zip(found, truth, strict=True)
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in pairs]))


def _speed_columns(row: Row, texts: dict[str, list[str]], timed: bool) -> list[str]:
    speed = []
    for kind in ("short", "mixed"):
        if not timed:
            speed += ["-", "-"]
            continue
        rate = len(texts[kind]) / statistics.median(row.seconds[kind])
        ratios = row.ratios[kind] or [1.0]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        speed += [f"{rate:,.0f}", f"{statistics.median(ratios):.2f} ({spread})"]
    return speed


def _print_table(
    reference: Row, rows: Sequence[Row], texts: dict[str, list[str]], args: argparse.Namespace
) -> None:
    timed = not args.no_timing
    short_end = len(texts["short"])
    documents = short_end + len(texts["mixed"])
    truth = _top_k(reference.queries, reference.corpus)
    clock = "thread CPU time, 1 thread" if args.cpu_time else "wall clock"
    print(
        f"corpus: {short_end} short lines, {len(texts['mixed'])} mixed chunks, "
        f"{len(reference.queries)} queries; {args.repeats} interleaved timing rounds "
        f"({clock}): texts/s median of the runs, x fp32 median of the per-run ratios "
        f"(range); batch diff: max |alone - batched| over {BATCH_TEXTS} texts, batches of "
        f"{' and '.join(map(str, BATCH_SIZES))}"
    )
    header = (
        f"{'config':<18} {'int8 MatMuls':>12} {'short texts/s':>14} {'x fp32 (range)':>17} "
        f"{'mixed texts/s':>14} {'x fp32 (range)':>17} {'cos min':>8} {'min short':>9} "
        f"{'min mixed':>9} {'cos median':>10} {'min tiny':>8} {'batch diff':>10} "
        f"{'top10 overlap':>13} {'top1 same':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in [reference, *rows]:
        cos = np.concatenate(
            [(row.corpus * reference.corpus).sum(1), (row.queries * reference.queries).sum(1)]
        )
        found = _top_k(row.queries, row.corpus)
        speed = _speed_columns(row, texts, timed)
        tiny = float((row.tiny * reference.tiny).sum(1).min())
        print(
            f"{row.name:<18} {row.nodes:>12} {speed[0]:>14} {speed[1]:>17} {speed[2]:>14} "
            f"{speed[3]:>17} {cos.min():>8.4f} {cos[:short_end].min():>9.4f} "
            f"{cos[short_end:documents].min():>9.4f} {np.median(cos):>10.5f} "
            f"{tiny:>8.4f} {row.batch_diff:>10.2g} {_overlap(found, truth):>13.3f} "
            f"{float(np.mean(found[:, 0] == truth[:, 0])):>9.3f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args, names = _arguments(argv)
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as scratch:
        reference, rows = _rows(args, names, Path(scratch))
        corpus = build_corpus(reference.embedder.count_tokens, args.short, args.mixed, args.queries)
        texts = {"short": corpus.short, "mixed": corpus.mixed}
        documents = corpus.short + corpus.mixed
        batch_texts = corpus.short[: BATCH_TEXTS * 3 // 5] + corpus.mixed[: BATCH_TEXTS * 2 // 5]
        for row in [reference, *rows]:  # also the warm-up of every session
            row.corpus = row.embedder.embed(documents)
            row.queries = row.embedder.embed(corpus.queries)
            row.tiny = row.embedder.embed(list(TINY_TEXTS))
            row.batch_diff = batch_difference(_one_call_each(row, args), batch_texts)
        _say(f"quality pass done: {len(documents)} documents, {len(corpus.queries)} queries")
        if not args.no_timing:
            _measure(rows, texts, args.repeats, reference, args.cpu_time)
        _print_table(reference, rows, texts, args)
        if args.quality:
            from int8_retrieval import print_retrieval

            print_retrieval([(r.name, r.embedder) for r in [reference, *rows]], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
