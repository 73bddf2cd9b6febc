"""The slices a fill claim is embedded in: sized by time from the model's pace."""

from __future__ import annotations

import pytest

from indexer.worker.pace import Pace


def test_the_first_slice_is_small_until_the_pace_is_known() -> None:
    pace = Pace(target=0.05, first=4)
    assert pace.slice([10] * 64) == 4
    assert pace.slice([10, 10]) == 2
    assert pace.slice([]) == 0


def test_a_slice_holds_as_many_texts_as_fit_the_target_padded_to_its_longest() -> None:
    pace = Pace(target=0.0505)
    pace.observe([10] * 4, 0.004)  # 0.1 ms per padded token
    assert pace.seconds_per_token == pytest.approx(1e-4)
    assert pace.slice([10] * 64) == 50  # 50 texts x 10 tokens x 0.1 ms: 50 ms
    # Shortest first: the longer texts further on pad the slice.
    assert pace.slice([10, 10, 100, 100, 100, 100, 100, 100]) == 5
    assert pace.slice([1000, 1000]) == 1  # one text over the target still makes a slice


def test_the_pace_follows_a_machine_that_slows_down() -> None:
    pace = Pace(target=0.0505)
    pace.observe([10] * 4, 0.004)
    pace.observe([10] * 50, 0.5)  # ten times slower: the load came back
    assert pace.seconds_per_token == pytest.approx(5.5e-4)
    assert pace.slice([10] * 64) == 9
    pace.observe([], 1.0)  # nothing embedded: nothing learnt
    assert pace.seconds_per_token == pytest.approx(5.5e-4)


def test_a_target_of_zero_makes_slices_of_one_text() -> None:
    pace = Pace(target=0.0)
    pace.observe([5], 0.001)
    assert pace.slice([5] * 10) == 1
