"""`indexer bench`: measure the model, the daemon and the database side by side."""

from __future__ import annotations

from indexer.bench.run import add_arguments, main

__all__ = ["add_arguments", "main"]
