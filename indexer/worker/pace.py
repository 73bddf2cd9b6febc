"""How many texts of a fill claim go into one model call: as many as a model embeds in
about :data:`SLICE_SECONDS`, from its pace on the slices before.

A fill claim is cut into slices so that new row work never waits for a whole claim
(:class:`~indexer.worker.fill.ModelFill`).  A slice's size is set by time, not by a
count of texts, because the same count is a few milliseconds for a small model on an
idle machine and a second for a large one on a loaded machine; a slice measured in time
bounds the wait the same way on both.  Small slices cost no throughput: the texts of a
claim are sorted shortest first, and a short slice pads less than the whole claim does
(the packaged int8 model on short source lines, two idle cores: 639 texts/s in calls of
64 sorted texts, 939/s in calls of 8, 867/s of 4, 742/s of 2).
"""

from __future__ import annotations

from collections.abc import Sequence

#: Model time one slice aims at: about the longest a new row waits for the fill's model
#: call in flight before the daemon turns to it.
SLICE_SECONDS = 0.01
#: Texts in a model's first slice, before its pace is known.
FIRST_SLICE = 4
#: Weight of the newest slice in the pace (the rest is the pace before it): the pace
#: follows a machine whose load changes, without jumping at one slow call.
NEWEST_WEIGHT = 0.5


class Pace:
    """One model's pace, in seconds per padded token (texts x the longest text: what a
    model call computes), learnt from the slices it embedded."""

    def __init__(self, target: float = SLICE_SECONDS, first: int = FIRST_SLICE) -> None:
        self.target = target
        self.first = first
        self.seconds_per_token: float | None = None

    def slice(self, lengths: Sequence[int]) -> int:
        """How many of the next texts (their token ``lengths``, shortest first) make one
        slice: as many as fit the target at this pace, at least one."""
        if not lengths:
            return 0
        rate = self.seconds_per_token
        if rate is None:
            return min(self.first, len(lengths))
        count = 1
        # Shortest first: the text added is the longest of the slice, and pads the rest.
        while count < len(lengths) and (count + 1) * lengths[count] * rate <= self.target:
            count += 1
        return count

    def observe(self, lengths: Sequence[int], seconds: float) -> None:
        """A slice of texts of ``lengths`` took ``seconds`` of model time."""
        if not lengths:
            return
        rate = seconds / (len(lengths) * max(*lengths, 1))
        if self.seconds_per_token is None:
            self.seconds_per_token = rate
        else:
            self.seconds_per_token += NEWEST_WEIGHT * (rate - self.seconds_per_token)
