"""The vectors of the bench's halfvec row, without a database or a model: unit length,
the same every run, queries that are not rows, and an exact top-k that is exact."""

from __future__ import annotations

import numpy as np

from indexer.bench.halfvec import exact_top, make_vectors, recalls


def test_the_vectors_are_unit_deterministic_and_held_out() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((50, 384)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    rows, queries = make_vectors(base, 500, 20)
    again = make_vectors(base, 500, 20)
    assert rows.shape == (500, 384) and queries.shape == (20, 384)
    assert rows.dtype == queries.dtype == np.float32
    np.testing.assert_array_equal(rows, again[0])
    np.testing.assert_array_equal(queries, again[1])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    # No query is a row, and none is nearly one.
    assert float((queries @ rows.T).max()) < 0.999

    truth = exact_top(rows, queries, 10)
    brute = np.argsort(-(queries @ rows.T), axis=1, kind="stable")[:, :10] + 1
    assert [set(t) for t in truth.tolist()] == [set(b) for b in brute.tolist()]
    assert truth.min() >= 1 and truth.max() <= 500


def test_exact_top_of_rounded_vectors_and_recall() -> None:
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((3000, 384)).astype(np.float32)
    queries = rng.standard_normal((5, 384)).astype(np.float32)
    truth = exact_top(rows, queries, 10)
    rounded = exact_top(rows, queries, 10, half=True)
    # Rounding to 2-byte floats moves cosines by about 1e-4: random rows' top 10 keep
    # nearly all their members.
    assert np.mean(recalls(rounded.tolist(), truth)) >= 0.8
    assert recalls([[1, 2, 3], list(truth[1])], truth[:2]) == [
        len({1, 2, 3} & set(truth[0].tolist())) / 10,
        1.0,
    ]
