"""The model switch's answer check, on hand-made vectors: an answer passes only when
every score is the cosine of its query with the named model's vector of that hit."""

from __future__ import annotations

import numpy as np

from indexer.bench.common import normalise
from indexer.bench.traffic import Answer, Verdicts, scored_by


def _vectors(seed: int, rows: int = 10) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    found = normalise(rng.standard_normal((rows, 8)).astype(np.float32))
    return {i + 1: found[i] for i in range(rows)}


def _answer(query: np.ndarray, model: str, vectors: dict[int, np.ndarray]) -> Answer:
    hits = sorted(((i, float(query @ v)) for i, v in vectors.items()), key=lambda h: -h[1])
    return Answer("fill", model, query, hits)


def test_scores_of_the_named_model_pass_and_of_another_fail() -> None:
    first, second = _vectors(1), _vectors(2)
    stored = {"first": first, "second": second}
    query = normalise(np.ones((1, 8), dtype=np.float32))[0]
    verdicts = Verdicts()
    assert scored_by(_answer(query, "first", first), stored, verdicts)
    assert scored_by(_answer(query, "second", second), stored, verdicts)
    assert verdicts.hits == 20 and verdicts.indistinct_hits == 0
    # Scored on the other model's vectors: mixed, whichever model it names.
    assert not scored_by(_answer(query, "first", second), stored, verdicts)
    # A hit the named model has no vector for (searched where it has none).
    partial = {"first": {i: v for i, v in first.items() if i != 3}, "second": second}
    assert not scored_by(_answer(query, "first", first), partial, verdicts)
    # One score off by more than the tolerance.
    answer = _answer(query, "first", first)
    answer.hits[4] = (answer.hits[4][0], answer.hits[4][1] + 1e-3)
    assert not scored_by(answer, stored, verdicts)


def test_a_hit_both_models_would_score_alike_is_counted() -> None:
    first = _vectors(1)
    second = dict(_vectors(2))
    second[5] = first[5]  # the same vector in both models
    query = normalise(np.ones((1, 8), dtype=np.float32))[0]
    verdicts = Verdicts()
    assert scored_by(_answer(query, "first", first), {"first": first, "second": second}, verdicts)
    assert verdicts.indistinct_hits == 1
