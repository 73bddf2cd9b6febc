"""Prometheus metrics of one daemon, in a registry of its own (no global state).

Batch counters are fed by the worker's ``on_batch`` callback; the backlog and claim
lag gauges are read from the database's status view when /metrics is scraped
(:meth:`Metrics.observe_status`), so they are true for the whole table, not only
this daemon's share.  So are the per-source gauges (:meth:`Metrics.observe_sources`):
documents by state and lag, one labelled series per source, and the per-model ones
(:meth:`Metrics.observe_models`, and :meth:`Metrics.observe_coverage` from a read at
most once a minute: :mod:`indexer.http.coverage`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from indexer.worker.claim import BatchResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The ``state`` label values of indexer_source_documents.
SOURCE_STATES = ("pending", "in_flight", "failed", "indexed")


#: What the daemon counts of a remote model's batches (its server's ``usage``, the
#: requests it took, and the cost at the registered price).
PROVIDER_FIGURES = {
    "prompt_tokens": "tokens the server reported",
    "requests": "requests sent",
    "retries": "requests sent again after a server error or timeout",
    "deferrals": "requests deferred by the server (429 or 503 with Retry-After)",
    "truncated": "inputs truncated to the model's token limit",
    "cost": "cost at the registered price per million tokens",
}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._written = 0
        self._reused = 0
        r = self.registry
        self.rows_embedded = Counter(
            "indexer_rows_embedded", "Rows whose vector this daemon wrote", registry=r
        )
        self.rows_failed = Counter(
            "indexer_rows_failed", "Rows that failed to embed (retried or parked)", registry=r
        )
        self.rows_reused = Counter(
            "indexer_rows_reused",
            "Rows written with a vector that cost no model call (vector cache, or an equal "
            "text in the same claim)",
            registry=r,
        )
        self.passages_written = Counter(
            "indexer_passages_written",
            "Passages of the sources' documents whose vector this daemon wrote",
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            "indexer_cache_hit_ratio",
            "Share of the vectors (rows and passages) this daemon wrote that were reused",
            registry=r,
        )
        self.rows_stale = Counter(
            "indexer_rows_stale",
            "Vectors discarded because the row changed or was deleted in flight",
            registry=r,
        )
        self.batches = Counter("indexer_batches", "Batches by outcome", ["outcome"], registry=r)
        self.tokens = Counter("indexer_tokens", "Tokens embedded", registry=r)
        self.batch_seconds = Histogram(
            "indexer_batch_embed_seconds",
            "Model time per batch",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.backlog = Gauge(
            "indexer_backlog_rows", "Rows pending or in flight (whole table)", registry=r
        )
        self.failed_rows = Gauge(
            "indexer_failed_rows", "Rows parked as failed (whole table)", registry=r
        )
        self.claim_lag = Gauge(
            "indexer_claim_lag_seconds",
            "Age of the oldest row waiting to be embedded (0 when none)",
            registry=r,
        )
        self.source_documents = Gauge(
            "indexer_source_documents",
            "Documents of each source by state (pending, in_flight, failed, indexed)",
            ["source", "state"],
            registry=r,
        )
        self.source_lag = Gauge(
            "indexer_source_lag_seconds",
            "Age of the oldest document of each source waiting to be indexed (0 when none)",
            ["source"],
            registry=r,
        )
        self._sources: set[str] = set()
        self.model_active = Gauge(
            "indexer_model_active",
            "1 for the active model (the one search uses by default), 0 for the others",
            ["model"],
            registry=r,
        )
        self.model_queued = Gauge(
            "indexer_model_queued",
            "Chunks queued for each model's background work (newest work first), and "
            "those parked after failing (state failed)",
            ["model", "state"],
            registry=r,
        )
        self._models: set[str] = set()
        self.model_coverage = Gauge(
            "indexer_model_coverage_ratio",
            "Share of the embedded chunks that have each model's vector (1: complete)",
            ["model"],
            registry=r,
        )
        self.model_eta = Gauge(
            "indexer_model_eta_seconds",
            "Time each model's background work needs to cover every embedded chunk, at its "
            "rate of the last minute (0: complete; +Inf: chunks missing and none written "
            "in the last minute)",
            ["model"],
            registry=r,
        )
        self.model_index_ready = Gauge(
            "indexer_model_index_ready",
            "Whether each model's HNSW index is built (0 while a model added to a large "
            "store waits for its fill, or its index is being built)",
            ["model"],
            registry=r,
        )
        self._covered: set[str] = set()
        self.provider_away = Gauge(
            "indexer_provider_away",
            "1 while a remote model's server is away (busy or down: its work waits), by model",
            ["model"],
            registry=r,
        )
        self._away: set[str] = set()
        self.provider = {
            figure: Counter(
                f"indexer_provider_{figure}",
                f"Remote models: {about}, by model",
                ["model"],
                registry=r,
            )
            for figure, about in PROVIDER_FIGURES.items()
        }
        for outcome in ("completed", "failed"):
            self.batches.labels(outcome=outcome)
        # The HTTP API (`indexer run --http`); endpoint is one of its paths or "other",
        # so the label set stays bounded whatever clients request.
        self.database_up = Gauge(
            "indexer_database_up",
            "1 when the last /metrics or /health check reached the migrated database",
            registry=r,
        )
        self.http_requests = Counter(
            "indexer_http_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "indexer_http_request_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )

    def observe_batch(self, result: BatchResult) -> None:
        # The vector cache serves rows and passages alike; the rows' counters count rows.
        self._written += len(result.written)
        self._reused += result.reused
        if self._written:
            self.cache_hit_ratio.set(self._reused / self._written)
        if result.documents:
            self.passages_written.inc(len(result.written))
        else:
            self.rows_embedded.inc(len(result.written))
            self.rows_reused.inc(result.reused)
            self.rows_failed.inc(len(result.failed))
            self.rows_stale.inc(result.stale)
        self.tokens.inc(result.tokens)
        self.batch_seconds.observe(result.embed_ms / 1000)
        self.batches.labels(outcome="failed" if result.failed else "completed").inc()
        if result.provider is not None:
            for figure, counter in self.provider.items():
                value = result.provider.get(figure)
                if value:
                    counter.labels(model=result.model).inc(value)

    def observe_status(self, status: dict[str, Any]) -> None:
        self.backlog.set(status["backlog"])
        self.failed_rows.set(status["failed"])
        age = status.get("oldest_pending_age")
        self.claim_lag.set(age.total_seconds() if age is not None else 0.0)

    def observe_sources(self, sources: Sequence[dict[str, Any]]) -> None:
        """Set the per-source gauges from ``Store.source_queue_status()`` rows; a source
        removed since the last scrape loses its series."""
        seen = set()
        for row in sources:
            name = str(row["source"])
            seen.add(name)
            for state in SOURCE_STATES:
                self.source_documents.labels(source=name, state=state).set(row[state])
            lag = row.get("lag")
            self.source_lag.labels(source=name).set(lag.total_seconds() if lag is not None else 0.0)
        for gone in self._sources - seen:
            for state in SOURCE_STATES:
                self.source_documents.remove(gone, state)
            self.source_lag.remove(gone)
        self._sources = seen

    def observe_models(self, models: Sequence[dict[str, Any]]) -> None:
        """Set the per-model gauges from ``Store.model_queue_status()`` rows; a model
        dropped since the last scrape loses its series."""
        seen = set()
        for row in models:
            name = str(row["model"])
            seen.add(name)
            self.model_active.labels(model=name).set(1 if row["active"] else 0)
            self.model_queued.labels(model=name, state="queued").set(row["queued"])
            self.model_queued.labels(model=name, state="failed").set(row["failed"])
        away = {str(row["model"]) for row in models if row.get("away_since") is not None}
        for name in away:
            self.provider_away.labels(model=name).set(1)
        for back in self._away - away:
            self.provider_away.remove(back)
        self._away = away
        for gone in self._models - seen:
            self.model_active.remove(gone)
            self.model_queued.remove(gone, "queued")
            self.model_queued.remove(gone, "failed")
        self._models = seen

    def observe_coverage(self, models: Sequence[dict[str, Any]]) -> None:
        """Set the coverage and ETA gauges from ``Store.model_status()`` rows (the view
        ``indexer_model_status``); a model dropped since loses its series."""
        seen = set()
        for row in models:
            name = str(row["model"])
            seen.add(name)
            chunks = int(row["chunks"])
            self.model_coverage.labels(model=name).set(
                int(row["covered"]) / chunks if chunks else 1.0
            )
            eta = row.get("eta")
            self.model_eta.labels(model=name).set(
                eta.total_seconds() if eta is not None else math.inf
            )
            self.model_index_ready.labels(model=name).set(1 if row["index"] == "ready" else 0)
        for gone in self._covered - seen:
            self.model_coverage.remove(gone)
            self.model_eta.remove(gone)
            self.model_index_ready.remove(gone)
        self._covered = seen

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.http_requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.http_seconds.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
