"""What the worker holds between statements: a claim, the batch it is writing, results.

A **claim** is the rows one ``FOR UPDATE SKIP LOCKED`` statement leased.  Rows the
vector cache answered are written first, as one batch; the others are tokenized once
(one text per group of equal rows), sorted shortest first and cut into **batches**
(one write and one ``events`` row each); a batch is embedded in one or more **model
calls** that the embedder plans under its token budget.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.embedding import Tokenized
from indexer.store import ClaimedRow


@dataclass
class Claim:
    """Rows claimed together and not written yet.

    ``reused``: rows whose vector the cache already had (written first, in a batch of
    their own, with no model call).  ``groups``: the other rows, those with equal text
    (equal hash) grouped so that each text is embedded once; one entry of
    ``tokenized`` per group, shortest first.  Sorting a whole claim by length before
    cutting it into batches is what keeps the model's padding low: a batch then holds
    texts of nearly equal length.
    """

    reused: list[ClaimedRow]
    groups: list[list[ClaimedRow]]
    tokenized: Tokenized
    claim_ms: float
    #: True until the first batch is taken: the leases are as fresh as the claim.
    fresh: bool = True

    @classmethod
    def of(
        cls,
        rows: list[ClaimedRow],
        tokenize: Callable[[Sequence[str]], Tokenized],
        claim_ms: float,
    ) -> Claim:
        """Split ``rows`` into reused rows and groups of equal text; tokenize each
        group's text once and sort the groups shortest first."""
        reused = [r for r in rows if r.cached is not None]
        by_text: dict[bytes | str, list[ClaimedRow]] = {}
        for row in rows:
            if row.cached is None:
                by_text.setdefault(row.hash if row.hash is not None else row.content, []).append(
                    row
                )
        groups = list(by_text.values())
        tokenized = tokenize([g[0].content for g in groups]) if groups else Tokenized((), ())
        order = tokenized.by_length()
        return cls(reused, [groups[i] for i in order], tokenized.select(order), claim_ms)

    def take_reused(self) -> tuple[list[ClaimedRow], float]:
        """The rows with a cached vector, and the claim's time (first take only)."""
        rows, self.reused = self.reused, []
        return rows, self._take_claim_ms()

    def take(self, count: int) -> tuple[list[list[ClaimedRow]], Tokenized, float]:
        """The next ``count`` texts (groups of rows), their tokens, and the claim's time
        (first take only)."""
        groups, self.groups = self.groups[:count], self.groups[count:]
        taken = self.tokenized.select(range(len(groups)))
        self.tokenized = self.tokenized.select(range(len(groups), len(self.tokenized)))
        return groups, taken, self._take_claim_ms()

    def _take_claim_ms(self) -> float:
        self.fresh = False
        claim_ms, self.claim_ms = self.claim_ms, 0.0
        return claim_ms

    def drop(self, ids: set[int]) -> None:
        """Forget rows this daemon no longer holds (another daemon took them over)."""
        self.reused = [r for r in self.reused if r.id not in ids]
        keep = []
        for number, group in enumerate(self.groups):
            rows = [r for r in group if r.id not in ids]
            if rows:
                self.groups[number] = rows
                keep.append(number)
        self.groups = [self.groups[i] for i in keep]
        self.tokenized = self.tokenized.select(keep)

    @property
    def ids(self) -> list[int]:
        """Every row still held: reused ones and those waiting for the model."""
        return [r.id for r in self.reused] + [r.id for g in self.groups for r in g]


@dataclass
class PendingWrite:
    """A batch embedded and not yet written: kept until its write commits, so a write
    cut off by a database outage is retried when the database returns."""

    batch_id: uuid.UUID
    good: list[tuple[ClaimedRow, np.ndarray]]
    bad: list[tuple[ClaimedRow, str]]
    tokens: int
    claim_ms: float
    embed_ms: float
    rows: list[ClaimedRow]
    #: ids of the good rows whose vector cost no model call: from the cache, or from an
    #: equal text embedded for another row of the batch.
    reused: set[int] = field(default_factory=set)
    #: What the event records besides the figures (a remote model's usage).
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchResult:
    """What one batch came to (handed to ``on_batch``: metrics, the progress bar)."""

    batch_id: uuid.UUID
    claimed: int
    written: list[int]
    failed: list[int]
    tokens: int
    embed_ms: float
    stale: int = 0
    #: rows written with a vector that cost no model call (see PendingWrite.reused).
    reused: int = 0
    #: a batch of documents: ``written`` are the ids of their new passages, not rows
    #: (metrics and the progress bar count them apart).
    documents: bool = False
    #: the model that embedded it, and, for a remote model, what its server reported
    #: (tokens, requests, retries, deferrals, truncated, cost).
    model: str = ""
    provider: dict[str, Any] | None = None
