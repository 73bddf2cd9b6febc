"""Model-call planning and length ordering: pure functions, no model needed."""

from __future__ import annotations

import random

import pytest

from indexer.embedding import Tokenized, plan_calls, shortest_first


def _check_plan(lengths: list[int], budget: int) -> list[list[int]]:
    """The plan, after checking what every plan must hold."""
    calls = plan_calls(lengths, budget)
    flat = [i for call in calls for i in call]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(calls)
    for call in calls:
        if len(call) > 1:
            assert len(call) * max(lengths[i] for i in call) <= budget
    assert [lengths[i] for i in flat] == sorted(lengths)
    return calls


def test_plan_calls_respects_budget_and_covers_every_index() -> None:
    rng = random.Random(11)
    for _ in range(200):
        lengths = [rng.randint(2, 256) for _ in range(rng.randint(0, 120))]
        _check_plan(lengths, rng.choice([256, 300, 1000, 4096, 8192]))


def test_plan_calls_edge_cases() -> None:
    assert plan_calls([], 8192) == []
    assert _check_plan([500], 100) == [[0]]
    # A text longer than the budget gets a model call of its own; the others still pack.
    assert _check_plan([10, 500, 10, 10], 30) == [[0, 2, 3], [1]]
    assert _check_plan([10, 10, 10, 10], 30) == [[0, 1, 2], [3]]
    assert _check_plan([256] * 4, 512) == [[0, 1], [2, 3]]
    # Sorted by length: shorter texts first, ties keep input order.
    assert _check_plan([9, 3, 5], 1000) == [[1, 2, 0]]
    with pytest.raises(ValueError):
        plan_calls([3], 0)


def test_shortest_first_is_a_stable_sort() -> None:
    assert shortest_first([]) == []
    assert shortest_first([5, 2, 5, 1, 2]) == [3, 1, 4, 0, 2]
    lengths = [random.Random(5).randint(1, 9) for _ in range(300)]
    order = shortest_first(lengths)
    assert order == sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


def _tokenized() -> Tokenized:
    return Tokenized(
        ("long text", "a", "mid", "b"),
        ((101, 1, 2, 3, 102), (101, 4, 102), (101, 5, 6, 102), (101, 7, 102)),
    )


def test_tokenized_lengths_and_len() -> None:
    tokenized = _tokenized()
    assert len(tokenized) == 4
    assert tokenized.lengths == [5, 3, 4, 3]
    assert len(Tokenized((), ())) == 0


def test_tokenized_select_keeps_the_given_order() -> None:
    tokenized = _tokenized()
    picked = tokenized.select([2, 0, 2])
    assert picked.texts == ("mid", "long text", "mid")
    assert picked.ids == (tokenized.ids[2], tokenized.ids[0], tokenized.ids[2])
    assert tokenized.select([]) == Tokenized((), ())


def test_tokenized_by_length_is_shortest_first() -> None:
    tokenized = _tokenized()
    assert tokenized.by_length() == [1, 3, 2, 0]
    assert tokenized.by_length() == shortest_first(tokenized.lengths)
    assert tokenized.select(tokenized.by_length()).lengths == [3, 3, 4, 5]
