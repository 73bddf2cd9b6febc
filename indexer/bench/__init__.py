"""`indexer bench`: the figures the docs' benchmarks quote (docs/benchmarks/performance.md).

Nine sections, each in a module of its own (:mod:`~indexer.bench.model`,
:mod:`~indexer.bench.backfill`, :mod:`~indexer.bench.latency`,
:mod:`~indexer.bench.search`, :mod:`~indexer.bench.memory`,
:mod:`~indexer.bench.claim`, :mod:`~indexer.bench.cache`,
:mod:`~indexer.bench.documents`, :mod:`~indexer.bench.switch` with its traffic in
:mod:`~indexer.bench.traffic`), and an opt-in one (:mod:`~indexer.bench.halfvec`,
``--halfvec-rows N``); :mod:`~indexer.bench.targets` holds the targets as one
table of data and :mod:`~indexer.bench.report` prints them.  Importing this package
loads only the command's parser; the measuring code loads when :func:`main` runs.
"""

from __future__ import annotations

from indexer.bench.cli import add_arguments, main

__all__ = ["add_arguments", "main"]
