"""The per-model gauges of /metrics, set from the rows the database gives."""

from __future__ import annotations

import datetime
import math

from prometheus_client.parser import text_string_to_metric_families

from indexer.metrics import Metrics


def _gauges(metrics: Metrics, name: str) -> dict[str, float]:
    return {
        s.labels["model"]: s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
        if s.name == name
    }


def _row(
    model: str, chunks: int, covered: int, eta: datetime.timedelta | None, index: str = "ready"
) -> dict[str, object]:
    return {
        "model": model,
        "chunks": chunks,
        "covered": covered,
        "missing": chunks - covered,
        "eta": eta,
        "index": index,
    }


def test_coverage_and_eta_of_each_model() -> None:
    metrics = Metrics()
    metrics.observe_coverage(
        [
            _row("first", 200, 200, datetime.timedelta(0)),
            _row("second", 200, 50, datetime.timedelta(minutes=2), "none"),
            _row("stalled", 200, 10, None, "building"),  # nothing written in the last minute
            _row("empty", 0, 0, datetime.timedelta(0)),  # no chunk yet: nothing to cover
        ]
    )
    assert _gauges(metrics, "indexer_model_coverage_ratio") == {
        "first": 1.0,
        "second": 0.25,
        "stalled": 0.05,
        "empty": 1.0,
    }
    eta = _gauges(metrics, "indexer_model_eta_seconds")
    assert eta["first"] == 0 and eta["second"] == 120 and eta["empty"] == 0
    assert math.isinf(eta["stalled"])
    assert _gauges(metrics, "indexer_model_index_ready") == {
        "first": 1.0,
        "second": 0.0,
        "stalled": 0.0,
        "empty": 1.0,
    }


def test_a_dropped_model_loses_its_series() -> None:
    metrics = Metrics()
    metrics.observe_coverage([_row("first", 10, 10, None), _row("second", 10, 5, None)])
    metrics.observe_coverage([_row("first", 10, 10, datetime.timedelta(0))])
    assert set(_gauges(metrics, "indexer_model_coverage_ratio")) == {"first"}
    assert set(_gauges(metrics, "indexer_model_eta_seconds")) == {"first"}
    assert set(_gauges(metrics, "indexer_model_index_ready")) == {"first"}
