"""What the web console reads besides the status views: the last hour's throughput,
and the text around a passage of a document.

A mixin of :class:`indexer.store.Store`, like :mod:`indexer.store.documents`: it runs
the named queries of ``console.sql`` through the Store's own ``_execute``.  The console's
overview and failures are the Store's ``status``, ``source_status``, ``failed_rows`` and
``failed_documents``, the very calls behind ``indexer status``: one source of truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from indexer.exceptions import SourceError, first_line
from indexer.store.protocol import Executes


@dataclass(frozen=True)
class Span:
    """Characters ``start``:``end`` (0-based, end exclusive) of a document's text."""

    source: str
    key: str
    start: int
    end: int


class ConsoleQueries:
    def throughput(self: Executes) -> list[dict[str, Any]]:
        """The last hour, one dict per minute, oldest first (60 of them): ``minute``,
        ``rows``, ``passages``, ``reused``, ``tokens``, ``batches``, ``failed_batches``."""
        return [dict(r) for r in self._execute("throughput")]

    def span_texts(self: Executes, spans: Sequence[Span]) -> list[str | None]:
        """The current text of each span (shorter where the document is shorter now), or
        None where its document or source is gone.  SourceError when a source's table
        cannot be read (dropped, rights revoked, locked)."""
        if not spans:
            return []
        params = {
            "sources": [s.source for s in spans],
            "keys": [s.key for s in spans],
            "starts": [max(0, s.start) for s in spans],
            "ends": [max(0, s.start, s.end) for s in spans],
        }
        try:
            rows = self._execute("passage_context", params)
        except psycopg.Error as exc:  # a lost connection is DatabaseUnavailable already
            raise SourceError(f"cannot read the documents' text: {first_line(exc)}") from None
        texts: list[str | None] = [None] * len(spans)
        for r in rows:
            texts[int(r["n"]) - 1] = r["text"] or ""
        return texts
