"""Opt-in section (``--fill-rows N``): a model filled in the background, against the raw
model, and a daemon's memory with two models loaded, against each alone.

Three `indexer run --once` daemons on the same N distinct source lines (the switch's
corpus), in scratch schemas:

1. the packaged fp32 model alone embeds the rows (its peak RSS);
2. its int8 variant is registered beside it (``Store.add_model``, as ``indexer models
   add`` does), and a daemon with both fills it: the fill's rate, from the first to the
   last of its ``model_batch`` events, and the daemon's peak RSS with two models loaded;
3. in a second schema, the int8 variant as the settings' model embeds the same rows
   alone (its peak RSS).

The raw model is the int8 variant embedding the same lines in the bench's process, all in
one call of :meth:`~indexer.embedding.Embedder.embed` (sorted by length, as the backfill
section's raw model): once with the intra-op threads of a model filled
in the background (half the cores: :func:`~indexer.embedding.background.background_threads`),
which is what the fill's machinery costs, and once with every core, which is what leaving
half of them to the rest costs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from indexer.bench.common import say
from indexer.bench.context import Context
from indexer.bench.daemons import daemon_env
from indexer.bench.memory import MIB, drain_once
from indexer.bench.scratch import count_state, one, scratch_schema
from indexer.bench.switch import VARIANT, registration, switch_texts
from indexer.embedding import Embedder
from indexer.embedding.background import background_threads
from indexer.embedding.describe import ModelRecord
from indexer.embedding.session import default_threads
from indexer.exceptions import IndexerError
from indexer.settings import env_name
from indexer.store import Store

#: The fill's batches, timed from the end of the first to the end of the last.
_SPAN = (
    "SELECT count(*) AS batches, sum(row_count) AS rows,"
    " extract(epoch FROM max(at) - min(at)) AS span_s,"
    " min(row_count) AS smallest FROM events WHERE kind = 'model_batch'"
)


def _raw(ctx: Context, texts: list[str], threads: int, record: dict[str, Any]) -> float:
    """Texts a second of the int8 variant on ``texts``, all in one ``embed`` (sorted by
    length and cut into model calls by the token budget, as the backfill's raw model)."""
    settings = ctx.settings
    embedder = Embedder(
        record=ModelRecord.from_dict(record),
        cache_dir=settings.model_cache,
        threads=threads,
        token_budget=settings.token_budget,
        max_chars=settings.max_chars,
        spin=False,  # as a model filled in the background runs
    )
    embedder.embed(texts[: settings.batch_size])  # warm
    start = time.perf_counter()
    embedder.embed(texts)
    return len(texts) / (time.perf_counter() - start)


def bench_fill(ctx: Context, results: dict[str, Any]) -> None:
    rows = ctx.plan.fill_rows
    texts = switch_texts(ctx, rows)
    fp32 = {env_name("model_variant"): "fp32"}
    peaks: dict[str, float] = {}
    log = ctx.workdir / "fill-daemon.log"
    with scratch_schema(ctx, "fill") as (schema, conn):
        env = daemon_env(ctx, schema, **fp32)
        env.pop(env_name("model_dir"), None)
        conn.execute("INSERT INTO chunks (content) SELECT unnest(%s::text[])", (texts,))
        say(f"fill: fp32 alone embeds {rows} rows")
        peak, _ = drain_once(ctx, env, log)
        peaks["fp32"] = peak / MIB
        if count_state(conn, "embedded") != rows:
            raise IndexerError("`indexer run --once` left rows unembedded")
        target = registration(dataclasses.replace(ctx.settings, model_variant="fp32"))
        with Store(ctx.dsn, schema) as store:
            store.add_model(
                target.name,
                dimension=target.dimension,
                record=target.record,
                fingerprint=target.fingerprint,
            )
        say(f"fill: {VARIANT} registered; a daemon with both fills it")
        peak, seconds = drain_once(ctx, env, log)
        peaks["both"] = peak / MIB
        span = conn.execute(_SPAN).fetchone()
        if span is None or int(span["rows"] or 0) != rows or int(span["batches"]) < 3:
            raise IndexerError(f"the fill wrote {span}, not {rows} rows in 3 batches or more")
    with scratch_schema(ctx, "fill") as (schema, conn):
        env = daemon_env(ctx, schema, **{env_name("model_variant"): VARIANT})
        env.pop(env_name("model_dir"), None)
        conn.execute("INSERT INTO chunks (content) SELECT unnest(%s::text[])", (texts,))
        say(f"fill: {VARIANT} alone embeds {rows} rows")
        peak, _ = drain_once(ctx, env, log)
        peaks[VARIANT] = peak / MIB
        if one(conn, "SELECT count(*) FROM chunks WHERE state = 'embedded'") != rows:
            raise IndexerError("`indexer run --once` left rows unembedded")
    # The first batch's time is not in the span (its event marks its end): rows after it.
    filled = (int(span["rows"]) - int(span["smallest"])) / max(float(span["span_s"]), 1e-9)
    fill_threads, every = background_threads(), default_threads()
    say(f"fill: the raw model on {fill_threads} and on {every} threads")
    raw_fill = _raw(ctx, texts, fill_threads, target.record)
    raw_every = _raw(ctx, texts, every, target.record) if every != fill_threads else raw_fill
    alone = peaks["fp32"] + peaks[VARIANT]
    results["fill"] = {
        "rows": rows,
        "texts": "distinct lines of the standard library's source (the switch's corpus)",
        "model": target.name,
        "fill_threads": fill_threads,
        "threads": every,
        "fill_rows_per_s": round(filled, 1),
        "fill_batches": int(span["batches"]),
        "fill_run_s": round(seconds, 1),
        "raw_fill_threads_per_s": round(raw_fill, 1),
        "raw_every_core_per_s": round(raw_every, 1),
        "ratio_to_raw": round(filled / raw_fill, 4),
        "ratio_to_every_core": round(filled / raw_every, 4),
        "peak_rss_mib": {k: round(v, 1) for k, v in peaks.items()},
        "rss_ratio": round(peaks["both"] / alone, 4),
    }
