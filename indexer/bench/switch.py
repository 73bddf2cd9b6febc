"""Section 10: switching models without downtime, while queries and inserts run.

One run, in one scratch schema:

1. **the corpus**: ``--switch-rows`` distinct lines of the standard library's source
   (about 18 tokens each), embedded by the packaged all-MiniLM-L6-v2 (fp32) in the
   bench's process, in batches of 1,000, and COPYed in with ``embedding`` set (the
   trigger marks such rows embedded); the HNSW index is built after the load, as in the
   search section.  The daemon would write the same vectors, slower: this section
   measures the switch, not a backfill;
2. **the baseline**: an ``indexer run`` daemon (woken by NOTIFY, as in the latency
   section), a query loop and an INSERT probe (:mod:`indexer.bench.traffic`), warmed up
   for a moment, then timed for a window;
3. **the switch**: the int8 variant registered beside it (``Store.add_model``, once its
   graph is built, as ``indexer models add`` does); the daemon fills its vectors in the
   background, newest rows first, while both loops keep running, then builds the
   model's HNSW index (from 10,000 chunks on, it is built after the fill); once
   ``model_status`` shows none missing and the index ready, ``activate_model`` (tried
   again when a probe's row was embedded by fp32 in between and int8 has not caught up
   with it yet, as anyone switching would); then a window after the switch;
4. **the check**: every answer of the whole run (:func:`~indexer.bench.traffic.check_answers`),
   and both models complete at the end (the previous one is kept current, so switching
   back is instant).

The default size is 10,000 rows, not the target's 100,000, so that the row runs in a
few minutes: both the corpus's fp32 vectors and int8's fill grow with the rows, and on
the two-core VM of the benchmarks, shared with other work, 20,000 rows took 69 s for
the vectors and 11 minutes for the fill (34 chunks/s beside the traffic); 100,000 would
take about an hour.  ``--switch-rows 100000`` runs the full size.  The query embedding,
the searches, the probe and the daemon share the machine's cores, so the fill's cost to
search shows in the figures, as it would on a small server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from indexer.bench.common import TOP_K, Floats, percentile, say
from indexer.bench.context import Context
from indexer.bench.corpus import search_lines, stdlib_files
from indexer.bench.daemons import daemon_env, log_tail, start_daemon, wait_for
from indexer.bench.scratch import one, scratch_schema
from indexer.bench.search import load_embedded
from indexer.bench.traffic import (
    THINK_S,
    InsertProbe,
    Phases,
    QueryLoop,
    QueryTiming,
    check_answers,
)
from indexer.db import connect as db
from indexer.embedding import Embedder, load_embedder, load_query_embedder
from indexer.exceptions import IndexerError, InvalidInput
from indexer.registry import Embedders, describe_for_registry
from indexer.settings import Settings, env_name
from indexer.store import Store

#: The variant registered beside the packaged fp32 model, and switched to.
VARIANT = "int8"
POLL_INTERVAL_S = 3600
#: Seconds of traffic before the baseline is timed: buffer cache, prepared statements,
#: the daemon's and the query embedder's first model calls.
WARMUP_S = 2.0
#: Seconds between two reads of the new model's state while the fill runs.
STATUS_POLL_S = 1.0
#: The fill phase holds at least this many queries and probes before the switch: a tiny
#: run's fill can be over sooner.
MIN_FILL_QUERIES, MIN_FILL_PROBES = 20, 5
ACTIVATE_TRIES = 200
EMBED_BATCH = 1000


def bench_switch(ctx: Context, results: dict[str, Any]) -> None:
    settings = dataclasses.replace(ctx.settings, model_dir=None, model_variant="fp32")
    embedder = _packaged(ctx, settings)
    rows = ctx.plan.switch_rows
    texts = switch_texts(ctx, rows)
    start = time.perf_counter()
    vectors = _embed(embedder, texts)
    embed_s = time.perf_counter() - start
    target = registration(settings)
    with scratch_schema(ctx, "switch") as (schema, conn):
        loaded = load_embedded(conn, schema, vectors, texts, section="switch")
        daemon = _Daemon(ctx, schema, conn)
        with (
            Store(ctx.dsn, schema) as store,
            Store(ctx.dsn, schema) as searches,
            db.connect(ctx.dsn, schema, autocommit=True) as probe_conn,
        ):
            # The searches' model opened as Indexer.search opens it (load_query_embedder).
            embedders = Embedders(settings, load_query_embedder(settings))
            phases = Phases("warm-up")
            queries = QueryLoop(searches, embedders, ctx.corpus.queries, phases)
            probe = InsertProbe(probe_conn, ctx.corpus.short, phases, daemon.check)
            with _traffic(phases, queries, probe):
                switch = _run(ctx, store, phases, queries, probe, daemon, target)
            settled_s, status = _settle(store, daemon)
            verdicts = check_answers(conn, queries.answers, store.models(), embedders)
    results["switch"] = {
        "rows": rows,
        "texts": f"{rows} distinct lines of the standard library's source (20-200 "
        f"characters, median {int(np.median(embedder.count_tokens(texts)))} tokens)",
        "from_model": embedder.name,
        "to_model": target.name,
        "corpus": f"fp32 vectors computed in the bench's process ({EMBED_BATCH} texts a "
        "call), COPYed in with the embedding column set; HNSW index built after the load",
        "corpus_embed_s": round(embed_s, 1),
        "load_s": round(loaded["load_s"], 1),
        "index_build_s": round(loaded["index_build_s"], 1),
        "window_s": ctx.plan.switch_window_s,
        "think_ms": THINK_S * 1000,
        **_figures(queries, probe),
        **switch,
        "settled_s": round(settled_s, 1),
        "missing_at_end": {str(r["model"]): int(r["missing"]) for r in status},
        **verdicts.as_dict(),
    }


def _packaged(ctx: Context, settings: Settings) -> Embedder:
    """The packaged fp32 model: the bench's own embedder when it is that one."""
    if ctx.settings.model_dir is None and ctx.settings.model_variant == "fp32":
        return ctx.embedder
    return load_embedder(settings)


def switch_texts(ctx: Context, rows: int) -> list[str]:
    """``rows`` distinct source lines, none a query or a probe's text; about two lines
    wanted per file, at least 16, so that files of few lines leave enough."""
    per_file = max(16, -(-2 * rows // len(stdlib_files())))
    exclude = set(ctx.corpus.queries) | set(ctx.corpus.short)
    return search_lines(rows, exclude, per_file=per_file)


def _embed(embedder: Embedder, texts: list[str]) -> Floats:
    say(f"switch: embedding {len(texts)} lines with {embedder.name}")
    parts = []
    for start in range(0, len(texts), EMBED_BATCH):
        parts.append(embedder.embed(texts[start : start + EMBED_BATCH]))
        if (start // EMBED_BATCH) % 10 == 9:
            say(f"switch: {start + EMBED_BATCH} lines embedded")
    return np.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class _Target:
    """The model switched to, as ``indexer models add`` registers it."""

    name: str
    dimension: int
    record: dict[str, Any]
    fingerprint: str


def registration(settings: Settings) -> _Target:
    """The packaged model's int8 variant, opened once so that its graph is built and
    cached before the clock runs (``indexer models add`` does the same)."""
    record = describe_for_registry("packaged", variant=VARIANT)
    opened = Embedder(record=record, cache_dir=settings.model_cache, threads=1)
    return _Target(opened.name, opened.dim, record.as_dict(), record.fingerprint)


class _Daemon:
    """``indexer run`` on the scratch schema, with the packaged fp32 model (it adopts
    the model the migration registered) and NOTIFY wake-ups."""

    def __init__(self, ctx: Context, schema: str, conn: db.Connection) -> None:
        env = daemon_env(
            ctx,
            schema,
            INDEXER_POLL_INTERVAL=str(POLL_INTERVAL_S),
            **{env_name("model_variant"): "fp32"},
        )
        env.pop(env_name("model_dir"), None)
        self.log = ctx.workdir / "switch-daemon.log"
        self.child = start_daemon(ctx, env, self.log)
        started = "SELECT count(*) FROM events WHERE kind = 'worker_started'"
        self.waiter(lambda: bool(one(conn, started)), "before it started", 180, 0.05)

    def waiter(
        self, predicate: Callable[[], bool], what: str, timeout: float, interval: float
    ) -> float:
        return wait_for(predicate, timeout, what, child=self.child, log=self.log, interval=interval)

    def check(self) -> None:
        """Raise (with its log) if the daemon has exited."""
        if self.child.poll() is not None:
            raise IndexerError(
                f"the daemon exited ({self.child.returncode}) during the switch:\n"
                + log_tail(self.log)
            )


@contextlib.contextmanager
def _traffic(phases: Phases, queries: QueryLoop, probe: InsertProbe) -> Iterator[None]:
    """Both loops running; stopped (and their failures raised) on the way out."""
    queries.start()
    probe.start()
    try:
        yield
    finally:
        phases.stop.set()
        queries.thread.join()
        probe.thread.join()
    queries.join()
    probe.join()


def _hold(seconds: float, loops: tuple[QueryLoop, InsertProbe], daemon: _Daemon) -> None:
    """Let the traffic run for ``seconds``, stopping early if a loop or the daemon fails."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _healthy(loops, daemon)
        time.sleep(min(0.25, max(0.0, deadline - time.perf_counter())))


def _hold_phase(
    seconds: float, phase: str, loops: tuple[QueryLoop, InsertProbe], daemon: _Daemon
) -> None:
    """A timed window: ``seconds`` of traffic, and as long again as it takes for the
    phase to have timed its minimum of queries and probes (a loaded machine may time
    none in a short window)."""
    _hold(seconds, loops, daemon)
    queries, probe = loops
    while len(queries.timings[phase]) < MIN_FILL_QUERIES or (
        len(probe.latencies[phase]) < MIN_FILL_PROBES
    ):
        _hold(0.1, loops, daemon)


def _healthy(loops: tuple[QueryLoop, InsertProbe], daemon: _Daemon) -> None:
    for loop in loops:
        if loop.failed:
            loop.join()
    daemon.check()


def _await_switchable(
    store: Store,
    name: str,
    deadline: float,
    phases: Phases,
    loops: tuple[QueryLoop, InsertProbe],
    daemon: _Daemon,
) -> tuple[float, int]:
    """Wait until ``name`` covers every chunk and its index is ready; when its fill ended
    (perf_counter) and the chunks it covers.

    Polled cheaply: the index's state (``model_index``), and the exact count of missing
    chunks (a pass over ``chunks`` per model, hundreds of milliseconds of PostgreSQL's
    time at 100,000 chunks, which a poll every second would add to the searches' load)
    only once the index is ready.  On 10,000 chunks or more the index is built after the
    fill, once the daemon finds it filled: its build starting marks the fill's end, and
    the phase turns to "index".  Below, the index is there from the start, and the exact
    count is polled."""
    fill_end: float | None = None
    while True:
        state = store.model_index_state(name)
        now = time.perf_counter()
        if state in ("building", "broken") and fill_end is None:
            fill_end = now
            phases.current = "index"  # reported apart, and with the fill (the targets')
            say(f"switch: {name} filled; its index is being built")
        if state == "ready":
            missing, covered = _missing(store, name)
            if not missing:
                return (now if fill_end is None else fill_end), covered
        if now > deadline:
            raise IndexerError(f"{name} was not filled and indexed in time (index: {state})")
        _hold(STATUS_POLL_S, loops, daemon)


def _missing(store: Store, name: str) -> tuple[int, int]:
    """Embedded chunks ``name`` lacks a vector for, and those it covers."""
    row = next(r for r in store.model_status() if r["model"] == name)
    return int(row["missing"]), int(row["covered"])


def _run(
    ctx: Context,
    store: Store,
    phases: Phases,
    queries: QueryLoop,
    probe: InsertProbe,
    daemon: _Daemon,
    target: _Target,
) -> dict[str, Any]:
    """The phases: warm-up, before, fill (from the registration to the switch), after."""
    loops = (queries, probe)
    window = ctx.plan.switch_window_s
    _hold(WARMUP_S, loops, daemon)
    phases.current = "before"
    say(f"switch: baseline, {window:g} s")
    _hold_phase(window, "before", loops, daemon)
    phases.current = "fill"
    start = time.perf_counter()
    store.add_model(
        target.name,
        dimension=target.dimension,
        record=target.record,
        fingerprint=target.fingerprint,
    )
    add_ms = (time.perf_counter() - start) * 1000
    say(f"switch: {target.name} registered; the daemon fills it")
    deadline = start + max(600.0, ctx.plan.switch_rows / 10)
    fill_end, covered = _await_switchable(store, target.name, deadline, phases, loops, daemon)
    fill_s = fill_end - start
    index_s = time.perf_counter() - fill_end
    say(
        f"switch: {covered} chunks filled in {fill_s:.1f} s, its index ready {index_s:.1f} s "
        "after; switching"
    )
    while len(queries.timings["fill"]) + len(queries.timings["index"]) < MIN_FILL_QUERIES or (
        len(probe.latencies["fill"]) + len(probe.latencies["index"]) < MIN_FILL_PROBES
    ):
        _hold(0.1, loops, daemon)
    activate_ms, tries = _activate(store, target.name, phases)
    say(f"switch: {target.name} active ({tries} tries, {activate_ms:.0f} ms); after, {window:g} s")
    _hold_phase(window, "after", loops, daemon)
    return {
        "add_model_ms": round(add_ms, 1),
        "fill_s": round(fill_s, 1),
        "fill_chunks": covered,
        "fill_chunks_per_s": round(covered / fill_s, 1),
        "index_s": round(index_s, 1),
        "activate_ms": round(activate_ms, 1),
        "activate_tries": tries,
    }


def _activate(store: Store, name: str, phases: Phases) -> tuple[float, int]:
    """activate_model, tried again while a probe's row lacks the model's vector; the
    duration of the call that switched, and the tries."""
    for tries in range(1, ACTIVATE_TRIES + 1):
        start = time.perf_counter()
        try:
            store.activate_model(name)
        except InvalidInput:
            time.sleep(0.05)
            continue
        phases.current = "after"
        return (time.perf_counter() - start) * 1000, tries
    raise IndexerError(f"activate_model({name!r}) was refused {ACTIVATE_TRIES} times")


def _settle(store: Store, daemon: _Daemon) -> tuple[float, list[dict[str, Any]]]:
    """Seconds until every model covers every chunk (the previous model too: the daemon
    keeps it current), and the final indexer_model_status."""

    def complete() -> bool:
        return all(int(r["missing"]) == 0 for r in store.model_status())

    seconds = daemon.waiter(complete, "until both models cover every chunk", 120, STATUS_POLL_S)
    return seconds, store.model_status()


def _search(timings: list[QueryTiming]) -> dict[str, Any]:
    if not timings:
        return {"queries": 0}
    total = [t.total_ms for t in timings]
    sql_ms = [t.sql_ms for t in timings]
    return {
        "queries": len(timings),
        "p50_ms": round(percentile(total, 50), 2),
        "p95_ms": round(percentile(total, 95), 2),
        "max_ms": round(max(total), 1),
        "embed_p50_ms": round(percentile([t.embed_ms for t in timings], 50), 2),
        "sql_p50_ms": round(percentile(sql_ms, 50), 2),
        "sql_p95_ms": round(percentile(sql_ms, 95), 2),
    }


def _insert(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"samples": 0}
    return {
        "samples": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "max_ms": round(max(values), 1),
    }


def _ratios(by_phase: dict[str, dict[str, Any]], figures: tuple[str, ...]) -> dict[str, float]:
    """Each phase's figure over the baseline's, for the phases that have both."""
    before = by_phase["before"]
    out: dict[str, float] = {}
    for phase in ("fill", "after", "filling", "indexing"):
        for figure in figures:
            if figure in by_phase[phase] and before.get(figure):
                ratio = by_phase[phase][figure] / before[figure]
                out[f"{phase}_{figure.removesuffix('_ms')}"] = round(ratio, 2)
    return out


def _figures(queries: QueryLoop, probe: InsertProbe) -> dict[str, Any]:
    """Each phase's figures; "fill" is the whole switch before the activation (the fill
    and the index build after it), "filling" and "indexing" its two parts."""
    timings = {**queries.timings, "fill": queries.timings["fill"] + queries.timings["index"]}
    latencies = {**probe.latencies, "fill": probe.latencies["fill"] + probe.latencies["index"]}
    timings["filling"], timings["indexing"] = queries.timings["fill"], queries.timings["index"]
    latencies["filling"], latencies["indexing"] = probe.latencies["fill"], probe.latencies["index"]
    phases = ("before", "fill", "after", "filling", "indexing")
    search = {p: _search(timings[p]) for p in phases}
    insert = {p: _insert(latencies[p]) for p in phases}
    return {
        "search": search,
        "search_ratio": _ratios(search, ("p50_ms", "p95_ms")),
        "insert": insert,
        "insert_ratio": _ratios(insert, ("p50_ms",)),
        "probes": len(probe.ids),
        "k": TOP_K,
    }
