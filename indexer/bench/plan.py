"""The sizes of one bench run, from ``--quick`` and the explicit options.

Kept free of numpy and the database layer: the CLI imports it for every command's
parser (through :mod:`indexer.bench.cli`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from indexer.exceptions import InvalidInput

SECTIONS = (
    "model",
    "backfill",
    "latency",
    "search",
    "memory",
    "claim",
    "cache",
    "documents",
    "switch",
    "remote",
)
#: Sections that run only when their option asks for them (long, or of interest to
#: few), each with that option.
OPT_IN = {"halfvec": "--halfvec-rows", "fill": "--fill-rows"}


@dataclass(frozen=True)
class Plan:
    """Sizes of everything, from --quick and the explicit options."""

    quick: bool
    repeats: int
    short: int
    mixed: int
    backfill: int
    queries: int
    latency_samples: int
    search_rows: int
    memory_rows: int
    memory_runs: int
    claim_small: int
    claim_large: int
    claims: int
    search_copies: int
    #: Long Python documentation topics indexed as documents (at most: Python 3.11 has 34).
    documents: int
    #: Texts embedded alone and in batches by the model section's batch check.
    batch_texts: int
    #: Chunks of the model switch's corpus (its target is set at 100k: see
    #: :mod:`indexer.bench.switch` for why the default is smaller).
    switch_rows: int
    #: Seconds of traffic timed before the switch, and again after it.
    switch_window_s: float
    #: Rows each drain of the remote section embeds (in-process, remote, throttled).
    remote_rows: int = 2_000
    #: Rows of the opt-in halfvec vs vector comparison; 0: it does not run.
    halfvec_rows: int = 0
    #: Rows of the opt-in background fill vs the raw model; 0: it does not run.
    fill_rows: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        repeats = args.repeats if args.repeats is not None else (2 if quick else 3)
        plan = cls(
            quick=quick,
            repeats=repeats,
            short=128 if quick else 2000,
            mixed=32 if quick else 256,
            # Three default claims: the worker must sort and pad claim by claim.
            backfill=48 if quick else 768,
            queries=30 if quick else 200,
            latency_samples=12 if quick else 60,
            search_rows=args.search_rows or (3_000 if quick else 100_000),
            memory_rows=5 if quick else 20,
            memory_runs=1 if quick else repeats,
            claim_small=1_000,
            claim_large=args.claim_rows or (20_000 if quick else 1_000_000),
            claims=60 if quick else 300,
            search_copies=args.search_copies,
            documents=8 if quick else 1_000,
            batch_texts=24 if quick else 100,
            switch_rows=args.switch_rows or (1_000 if quick else 10_000),
            switch_window_s=3.0 if quick else 20.0,
            remote_rows=args.remote_rows or (192 if quick else 2_000),
            halfvec_rows=args.halfvec_rows or 0,
            fill_rows=args.fill_rows or 0,
        )
        if plan.repeats < 1 or plan.search_rows < 100 or plan.claim_large < 1:
            raise InvalidInput("--repeats must be >= 1 and --search-rows >= 100")
        if args.halfvec_rows is not None and args.halfvec_rows < 1000:
            raise InvalidInput("--halfvec-rows must be >= 1000")
        if args.fill_rows is not None and args.fill_rows < 200:
            raise InvalidInput("--fill-rows must be >= 200")
        if plan.switch_rows < 100:
            raise InvalidInput("--switch-rows must be >= 100")
        if plan.remote_rows < 10:
            raise InvalidInput("--remote-rows must be >= 10")
        if plan.search_copies < 1:
            raise InvalidInput("--search-copies must be >= 1")
        return plan


def chosen_sections(only: str | None, plan: Plan) -> tuple[str, ...]:
    """The sections ``--only`` names (all but the opt-in ones by default), in the order
    they run, and each opt-in section whose option was given.

    An opt-in section ``--only`` names without its option, or whose option was given
    with an ``--only`` that leaves it out, is refused: either way the command line asks
    for two different things.
    """
    asked = tuple(
        name for name, option in OPT_IN.items() if getattr(plan, option[2:].replace("-", "_"))
    )
    if not only:
        return SECTIONS + asked
    chosen = {s.strip() for s in only.split(",")}
    known = SECTIONS + tuple(OPT_IN)
    unknown = chosen - set(known)
    if unknown:
        raise InvalidInput(f"--only: unknown sections {sorted(unknown)}; choose from {known}")
    for name, option in OPT_IN.items():
        if name in chosen and name not in asked:
            raise InvalidInput(f"--only {name} needs {option} N")
        if name in asked and name not in chosen:
            raise InvalidInput(f"{option} was given but --only leaves out {name}")
    return tuple(s for s in known if s in chosen)
