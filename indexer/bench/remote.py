"""Section 11: a remote model's drain against the in-process model's, and throttled.

The same rows (``--remote-rows`` distinct chunks cut like the mixed corpus's) are
drained three ways, each by a :class:`~indexer.worker.Worker` in the bench's process
(``--once``, the vector cache off), in a freshly migrated schema of its own so that no
drain finds another's vectors:

1. **in-process**: the packaged all-MiniLM-L6-v2, the daemon's usual path;
2. **remote**: the same model registered as a remote model (``register_remote``),
   active, and the only one registered, served by another indexer's
   ``POST /v1/embeddings``: an ``indexer run --http`` subprocess with the threads a
   user gets by default, so that it competes for the cores as a user's would;
3. **throttled**: the remote drain again through :class:`~indexer.bench.proxy.ThrottlingProxy`,
   which answers one request in three 429 with ``Retry-After: 1``.

The three run in turn, the first two in alternating order each repetition; each ratio
is paired run by run.  What the remote path did (requests, deferrals, failed rows) is
read from the drain's ``batch_completed`` events, as an operator would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import httpx

from indexer.bench.common import median, paired_ratio, quiet, say, timed
from indexer.bench.context import Context
from indexer.bench.corpus import many_chunks
from indexer.bench.daemons import daemon_env, start_daemon, wait_for
from indexer.bench.proxy import RETRY_AFTER_S, THROTTLE_EVERY, ThrottlingProxy
from indexer.bench.scratch import (
    SCHEMA_HINT,
    SCHEMA_MARKER,
    count_state,
    migrated_schema,
    one,
    scratch_schema,
)
from indexer.db import connect as db
from indexer.embedding.remote import RemoteConfig, RemoteEmbedder
from indexer.exceptions import IndexerError
from indexer.registry import Embedders, register_remote

#: The remote model's registered name in the drains' schemas.
REMOTE_NAME = "remote-minilm"
#: How long the embeddings server may take to start (load the model, migrate nothing).
SERVER_START_S = 180.0


def bench_remote(ctx: Context, results: dict[str, Any]) -> None:
    texts = many_chunks(ctx.plan.remote_rows)
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "remote": [], "throttled": []}
    with scratch_schema(ctx, "remote_server") as (server_schema, _), quiet("indexer.worker"):
        upstream = _start_server(ctx, server_schema)
        direct = RemoteConfig(url=upstream, model=ctx.embedder.name, dimension=ctx.embedder.dim)
        _warm_up(ctx, direct, texts)

        def local() -> None:
            runs["local"].append(_drain(ctx, "local", texts, None))

        def remote() -> None:
            runs["remote"].append(_drain(ctx, "direct", texts, direct))

        for repeat in range(ctx.plan.repeats):
            for step in (local, remote) if repeat % 2 == 0 else (remote, local):
                step()
            with ThrottlingProxy(upstream) as proxy:
                throttled = dataclasses.replace(direct, url=proxy.url)
                runs["throttled"].append(_drain(ctx, "throttled", texts, throttled))
                runs["throttled"][-1]["proxy_throttled"] = proxy.counter.throttled
            say(f"remote: run {repeat + 1}/{ctx.plan.repeats} done")
    results["remote"] = _figures(ctx, direct, texts, runs)


def _free_port() -> int:
    """A port of 127.0.0.1 free a moment ago (the server binds it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_server(ctx: Context, schema: str) -> str:
    """An ``indexer run --http`` subprocess on a schema of its own (its queue stays
    empty); its ``/v1`` base URL once it answers."""
    env = daemon_env(ctx, schema)
    # The threads a user gets by default, whatever the bench was told: the server is
    # someone else's machine in the comparison, run as shipped.
    env.pop("INDEXER_THREADS", None)
    address = f"127.0.0.1:{_free_port()}"
    log = ctx.workdir / "remote-server.log"
    child = start_daemon(ctx, env, log, "--http", address)
    base = f"http://{address}/v1"
    wait_for(
        lambda: _answers(f"{base}/models"),
        SERVER_START_S,
        "starting the embeddings server",
        child=child,
        log=log,
        interval=0.2,
    )
    return base


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _warm_up(ctx: Context, config: RemoteConfig, texts: list[str]) -> None:
    """Both models run once before the clock starts (ONNX Runtime's first calls are
    slow), and the server is checked to give the in-process model's vectors."""
    sample = texts[:16]
    mine = ctx.embedder.embed(sample)
    with RemoteEmbedder(REMOTE_NAME, config) as remote:
        theirs = remote.embed(sample)
    if float(abs(mine - theirs).max()) > 1e-5:
        raise IndexerError("the embeddings server's vectors are not the in-process model's")


@contextlib.contextmanager
def _drain_schema(ctx: Context, name: str) -> Iterator[tuple[str, db.Connection]]:
    """A freshly migrated schema for one drain (no vector of an earlier drain in it),
    dropped afterwards; unlike :func:`scratch_schema`, it leaves the server running."""
    schema = ctx.schema(f"remote_{name}")
    with migrated_schema(
        ctx.dsn, ctx.admin, schema, marker=SCHEMA_MARKER, hint=SCHEMA_HINT
    ) as conn:
        yield schema, conn


def _drain(
    ctx: Context, name: str, texts: list[str], remote: RemoteConfig | None
) -> dict[str, Any]:
    """Figures of one drain of ``texts``: by the in-process model, or (``remote``) by
    that remote model, registered, active and alone in the registry."""
    from indexer.app import DAEMON_CONNECTIONS
    from indexer.store import Store
    from indexer.worker import Worker

    with _drain_schema(ctx, name) as (schema, conn):
        settings = dataclasses.replace(ctx.settings, schema=schema, cache=False)
        embedders = Embedders(settings, ctx.embedder)
        with Store(ctx.dsn, schema, pool_size=DAEMON_CONNECTIONS) as store:
            if remote is not None:
                _only_remote(store, remote)
            store.insert_chunks(texts, ["{}"] * len(texts))
            loader = embedders.loader if remote is not None else None
            worker = Worker(settings, store, ctx.embedder, load_model=loader)
            try:
                seconds = timed(lambda: worker.run(once=True))
            finally:
                embedders.close()
        return _outcome(conn, len(texts), seconds)


def _only_remote(store: Any, config: RemoteConfig) -> None:
    """Register the remote model, activate it and drop the local one: the drain then
    measures the remote path alone (a registered local model would be filled too)."""
    register_remote(store, REMOTE_NAME, config, probe=False)
    store.activate_model(REMOTE_NAME)  # no chunk yet: none is missing
    for model in store.models():
        if model.name != REMOTE_NAME:
            store.drop_model(model.name)


def _outcome(conn: db.Connection, rows: int, seconds: float) -> dict[str, Any]:
    """One drain's time, rows embedded and failed, and what its batches recorded."""
    embedded, failed = count_state(conn, "embedded"), count_state(conn, "failed")
    if embedded + failed != rows:
        raise IndexerError(f"the drain left {rows - embedded - failed} of {rows} rows unembedded")
    events = conn.execute(
        "SELECT count(*) AS batches, coalesce(sum(embed_ms), 0) AS embed_ms,"
        " coalesce(sum(write_ms), 0) AS write_ms,"
        " coalesce(sum((detail -> 'provider' ->> 'requests')::int), 0) AS requests,"
        " coalesce(sum((detail -> 'provider' ->> 'deferrals')::int), 0) AS deferrals"
        " FROM events WHERE kind = 'batch_completed'"
    ).fetchone()
    assert events is not None
    return {
        "seconds": round(seconds, 3),
        "embedded": embedded,
        "failed": failed,
        "batch_failed": int(one(conn, "SELECT count(*) FROM events WHERE kind = 'batch_failed'")),
        "batches": int(events["batches"]),
        "embed_ms": round(float(events["embed_ms"]), 1),
        "write_ms": round(float(events["write_ms"]), 1),
        "requests": int(events["requests"]),
        "deferrals": int(events["deferrals"]),
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median time (the lower middle of an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def _path(rows: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One path's figures: its rate (median time), failures over every run, and its
    median run's batches, requests and deferrals."""
    seconds = [r["seconds"] for r in runs]
    middle = _median_run(runs)
    return {
        "rows_per_s": round(rows / median(seconds), 1),
        "runs_s": seconds,
        "failed": sum(r["failed"] for r in runs),
        "batch_failed": sum(r["batch_failed"] for r in runs),
        "median_run": middle,
    }


def _figures(
    ctx: Context, config: RemoteConfig, texts: list[str], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    rows = len(texts)
    local, remote, throttled = (runs[k] for k in ("local", "remote", "throttled"))
    local_s = [r["seconds"] for r in local]
    remote_s = [r["seconds"] for r in remote]
    throttled_s = [r["seconds"] for r in throttled]
    return {
        "rows": rows,
        "chars": sum(map(len, texts)),
        "batch_size": ctx.settings.batch_size,
        "in_flight": config.in_flight,
        "inputs_per_request": config.inputs_per_request,
        "local": _path(rows, local),
        "remote": _path(rows, remote),
        "throttled": {
            **_path(rows, throttled),
            "deferrals": sum(r["deferrals"] for r in throttled),
            "requests": sum(r["requests"] for r in throttled),
            "proxy_throttled": sum(r["proxy_throttled"] for r in throttled),
            "throttle": f"429 with Retry-After: {RETRY_AFTER_S} to 1 request in {THROTTLE_EVERY}",
        },
        # Paired: each remote drain against the in-process drain beside it.
        "ratio_to_local": round(paired_ratio(local_s, remote_s), 3),
        "throttled_ratio": round(paired_ratio(remote_s, throttled_s), 3),
    }
