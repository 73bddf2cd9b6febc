"""What the worker holds between statements: a claim, the batch it is writing, results.

A **claim** is the rows one ``FOR UPDATE SKIP LOCKED`` statement leased; it is
tokenized once, sorted shortest first and cut into **batches** (one write and one
``events`` row each); a batch is embedded in one or more **model calls** that the
embedder plans under its token budget.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from indexer.embedding import Tokenized
from indexer.store import ClaimedRow


@dataclass
class Claim:
    """Rows claimed together and not embedded yet: tokenized once, shortest first.

    Sorting a whole claim by length before cutting it into batches is what keeps the
    model's padding low: a batch then holds rows of nearly equal length.
    """

    rows: list[ClaimedRow]
    tokenized: Tokenized
    claim_ms: float

    @classmethod
    def sorted(cls, rows: list[ClaimedRow], tokenized: Tokenized, claim_ms: float) -> Claim:
        order = tokenized.by_length()
        return cls([rows[i] for i in order], tokenized.select(order), claim_ms)

    def take(self, count: int) -> tuple[list[ClaimedRow], Tokenized, float]:
        """The next ``count`` rows, their tokens, and the claim's time (first take only)."""
        rows, self.rows = self.rows[:count], self.rows[count:]
        taken = self.tokenized.select(range(len(rows)))
        self.tokenized = self.tokenized.select(range(len(rows), len(self.tokenized)))
        claim_ms, self.claim_ms = self.claim_ms, 0.0
        return rows, taken, claim_ms

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]


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
