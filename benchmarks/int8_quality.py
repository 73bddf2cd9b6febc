"""Speed and quality of int8 variants of the model against fp32, on the bench corpus.

    .venv/bin/python benchmarks/int8_quality.py [--repeats 3] [--configs all,no_ffn_out]

For each quantization recipe (:class:`indexer.embedding.quantize.Recipe`) this builds the int8
graph the way the package does (:func:`indexer.embedding.quantize.quantized_onnx_path`), runs it
through the daemon's own :class:`~indexer.embedding.Embedder` (same model calls, same
session options) and prints one table row:

* texts/s on short lines and on ~1 KB mixed chunks, and the ratio to fp32.  Timing
  runs are interleaved fp32, A, fp32, B, fp32, ...; each run of a variant is divided
  by the mean of the fp32 runs just before and after it, and the median of those
  ratios over ``--repeats`` rounds is printed, so a load that drifts (another
  benchmark sharing the cores) cancels out as far as it can;
* the min and median cosine of its vectors to the fp32 vectors (corpus and queries);
* top-10 neighbour overlap: for each query, the top 10 of the corpus (short + mixed)
  by cosine, int8 query against int8 corpus, compared with the fp32 top 10; and two
  readings of what the misses are: how often the fp32 top 1 is still the int8 top 1,
  and how much of the fp32 top 10 is within the int8 top 20 (a miss that is only a
  swap at the boundary of the top 10, among near ties, is found there).

The corpus is ``indexer.bench.corpus.build_corpus(count_tokens, 2000, 256, 200)``: lines and
chunks of the Python standard library's source, deterministic.  An extra reference
row, ``fp32+shapes``, is the fp32 graph with ONNX shape inference stored in it: the
quantizer stores shapes, which lets ONNX Runtime fuse Add + LayerNormalization into
SkipLayerNormalization, so that row separates the fusion's share of the speed-up from
int8's own (measured here: none; fp32+shapes ran at 0.97-0.99x fp32).  The int8 graphs
and that reference are cached in ``--cache-dir`` (about 1.3 GB for every recipe), so a
second run starts at once.  A tool for people, not part of CI; not used by the package.

Measured on the 2-core AMD EPYC (Zen 4, AVX-512 VNNI) with other benchmarks sharing
the cores (3 rounds; absolute texts/s are depressed by that load, ratios are not):

    config            int8 MatMuls  short x fp32  mixed x fp32  cos min  median  top10
    all                         24          2.13          1.97   0.9769  0.9928  0.865
    all_u8w                     24          1.31          1.25   0.9804  0.9929  0.872
    no_attn_out                 18          2.03          1.78   0.9807  0.9929  0.870
    no_last_layer               20          1.77          1.66   0.9775  0.9933  0.866
    no_early_ffn_out (shipped)  21          1.79          1.68   0.9891  0.9957  0.886
    no_ffn_out                  18          1.53          1.48   0.9899  0.9962  0.892
    qkv_ffn_in                  12          1.36          1.40   0.9907  0.9963  0.901
    ffn_in_only                  6          1.16          1.17   0.9892  0.9975  0.914
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.bench.corpus import build_corpus
from indexer.embedding import Embedder
from indexer.embedding.cache import atomic_write
from indexer.embedding.quantize import SHIPPED_RECIPE, Recipe, quantized_onnx_path
from indexer.embedding.resolve import resolve_model

Floats = npt.NDArray[np.float32]
TOP_K = 10
ROOT = Path(__file__).resolve().parent.parent
FP32 = "fp32"
FP32_SHAPES = "fp32+shapes"

#: The recipes compared by default (names are what --configs takes).
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("all"),
        Recipe("all_u8w", weight_type="uint8"),
        Recipe("all_reduce_range", reduce_range=True),
        Recipe("all_embeddings", embeddings=True),
        Recipe("no_attn_out", kinds=("qkv", "ffn_in", "ffn_out")),
        SHIPPED_RECIPE,  # no_early_ffn_out: FFN output projection of layers 0-2 in fp32
        Recipe("no_ffn_out_0_1", fp32_nodes=(("ffn_out", 0), ("ffn_out", 1))),
        Recipe("no_ffn_out", kinds=("qkv", "attention_output", "ffn_in")),
        Recipe("ffn_only", kinds=("ffn_in", "ffn_out")),
        Recipe("qkv_ffn_in", kinds=("qkv", "ffn_in")),
        Recipe("ffn_in_only", kinds=("ffn_in",)),
        Recipe("no_last_layer", fp32_layers=(-1,)),
        Recipe("no_first_last", fp32_layers=(0, -1)),
    )
}
DEFAULT_CONFIGS = (
    "all",
    "all_u8w",
    "no_attn_out",
    "no_last_layer",
    SHIPPED_RECIPE.name,
    "no_ffn_out",
    "qkv_ffn_in",
    "ffn_in_only",
)


@dataclass
class Row:
    """One variant: its embedder, its vectors, and its timings per round."""

    name: str
    embedder: Embedder
    nodes: str
    corpus: Floats = field(default_factory=lambda: np.empty((0, 0), np.float32))
    queries: Floats = field(default_factory=lambda: np.empty((0, 0), np.float32))
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


def _shape_inferred(fp32_path: Path, cache_dir: Path) -> Path:
    """The fp32 graph with ONNX shape inference stored in it (a reference only)."""
    import onnx

    data = fp32_path.read_bytes()
    target = cache_dir / (f"{fp32_path.stem}.shapes-{hashlib.sha256(data).hexdigest()[:16]}.onnx")
    if not target.is_file():
        model = onnx.shape_inference.infer_shapes(onnx.load_model_from_string(data))
        atomic_write(target, model.SerializeToString(deterministic=True), cache_dir)
    return target


def _count_quantized(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    matmuls, gathers = ops.count("MatMulInteger"), ops.count("DequantizeLinear")
    return f"{matmuls}" + (f"+{gathers}G" if gathers else "")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _top_k(queries: Floats, corpus: Floats, k: int = TOP_K) -> npt.NDArray[np.int64]:
    scores = queries @ corpus.T
    order: npt.NDArray[np.int64] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order


def _overlap(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    """Mean share of each row of ``truth`` that is in the same row of ``found``."""
    pairs = zip(found, truth, strict=True)
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in pairs]))


def _measure(
    rows: Sequence[Row], texts: dict[str, list[str]], repeats: int, reference: Row
) -> None:
    """Interleaved timing: fp32, A, fp32, B, ..., fp32, per round and per text kind."""
    for round_number in range(1, repeats + 1):
        for kind, batch in texts.items():
            fp32 = functools.partial(reference.embedder.embed, batch)
            before = _timed(fp32)
            reference.seconds[kind].append(before)
            for row in rows:
                took = _timed(functools.partial(row.embedder.embed, batch))
                after = _timed(fp32)
                reference.seconds[kind].append(after)
                row.seconds[kind].append(took)
                row.ratios[kind].append((before + after) / 2 / took)
                before = after
        _say(f"timing round {round_number}/{repeats} done")


def _arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The parsed command line, and the recipe names it asks for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated recipes (default: %(default)s; known: {', '.join(RECIPES)})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (default 3)")
    parser.add_argument("--short", type=int, default=2000, help="short lines (default 2000)")
    parser.add_argument("--mixed", type=int, default=256, help="~1 KB chunks (default 256)")
    parser.add_argument("--queries", type=int, default=200, help="queries (default 200)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument("--token-budget", type=int, default=2048, help="as the daemon's")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=ROOT / ".tmp" / "int8-bench",
        help="where the fp32 and int8 graphs are cached (default .tmp/int8-bench)",
    )
    parser.add_argument("--no-timing", action="store_true", help="quality columns only")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or args.repeats < 1:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}" if unknown else "--repeats >= 1")
    return args, names


def _rows(args: argparse.Namespace, names: Sequence[str], folders: Path) -> tuple[Row, list[Row]]:
    """The fp32 reference, then fp32+shapes and one row per recipe (graphs built if needed)."""
    cache_dir: Path = args.cache_dir
    fp32_files = resolve_model(None, cache_dir)

    def embedder(folder: Path | None) -> Embedder:
        return Embedder(
            folder, cache_dir=cache_dir, threads=args.threads, token_budget=args.token_budget
        )

    reference = Row(FP32, embedder(None), "0")
    shapes = _shape_inferred(fp32_files.onnx_path, cache_dir)
    shapes_folder = _linked_folder(folders, FP32_SHAPES, shapes, fp32_files.tokenizer_path)
    rows = [Row(FP32_SHAPES, embedder(shapes_folder), "0")]
    for name in names:
        started = time.perf_counter()
        path = quantized_onnx_path(fp32_files.onnx_path, cache_dir, RECIPES[name])
        _say(f"{name}: {path.name} ({time.perf_counter() - started:.1f} s)")
        folder = _linked_folder(folders, name, path, fp32_files.tokenizer_path)
        rows.append(Row(name, embedder(folder), _count_quantized(path)))
    return reference, rows


def _speed_columns(row: Row, texts: dict[str, list[str]], timed: bool) -> list[str]:
    """texts/s and the ratio to fp32 (with its range), for short and mixed texts."""
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
    reference: Row, rows: Sequence[Row], texts: dict[str, list[str]], repeats: int, timed: bool
) -> None:
    short_end = len(texts["short"])
    documents = short_end + len(texts["mixed"])
    truth = _top_k(reference.queries, reference.corpus)
    print(
        f"corpus: {short_end} short lines, {len(texts['mixed'])} mixed chunks, "
        f"{len(reference.queries)} queries; {repeats} interleaved timing rounds: texts/s "
        "median of the runs, x fp32 median of the per-run ratios (range in parentheses)"
    )
    header = (
        f"{'config':<18} {'int8 MatMuls':>12} {'short texts/s':>14} {'x fp32 (range)':>17} "
        f"{'mixed texts/s':>14} {'x fp32 (range)':>17} {'cos min':>8} {'min short':>9} "
        f"{'min mixed':>9} {'cos median':>10} {'top10 overlap':>13} {'top1 same':>9} "
        f"{'top10 in top20':>14}"
    )
    print(header)
    print("-" * len(header))
    for row in [reference, *rows]:
        cos = np.concatenate(
            [(row.corpus * reference.corpus).sum(1), (row.queries * reference.queries).sum(1)]
        )
        found = _top_k(row.queries, row.corpus, 2 * TOP_K)
        overlap = _overlap(found[:, :TOP_K], truth)
        top1 = float(np.mean(found[:, 0] == truth[:, 0]))
        within = _overlap(found, truth)
        speed = _speed_columns(row, texts, timed)
        print(
            f"{row.name:<18} {row.nodes:>12} {speed[0]:>14} {speed[1]:>17} {speed[2]:>14} "
            f"{speed[3]:>17} {cos.min():>8.4f} {cos[:short_end].min():>9.4f} "
            f"{cos[short_end:documents].min():>9.4f} {np.median(cos):>10.5f} "
            f"{overlap:>13.3f} {top1:>9.3f} {within:>14.3f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args, names = _arguments(argv)
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as scratch:
        reference, rows = _rows(args, names, Path(scratch))
        corpus = build_corpus(reference.embedder.count_tokens, args.short, args.mixed, args.queries)
        texts = {"short": corpus.short, "mixed": corpus.mixed}
        documents = corpus.short + corpus.mixed
        for row in [reference, *rows]:  # also the warm-up of every session
            row.corpus = row.embedder.embed(documents)
            row.queries = row.embedder.embed(corpus.queries)
        _say(f"quality pass done: {len(documents)} documents, {len(corpus.queries)} queries")
        if not args.no_timing:
            _measure(rows, texts, args.repeats, reference)
    _print_table(reference, rows, texts, args.repeats, not args.no_timing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
