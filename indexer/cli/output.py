"""Plain-text output of every command: :func:`visible` keeps user-supplied text on its
one line, and the small formatters (counts, durations, snippets, JSON values, a
source's status line) are shared here because ``status`` and ``sources list`` print
the same lines.
"""

from __future__ import annotations

import re
from typing import Any

#: What a terminal would act on rather than show, or that would reorder what it shows:
#: C0 and C1 controls and DEL (ESC, CR, NEL...), the line and paragraph separators, the
#: bidirectional marks, embeddings, overrides and isolates; and lone surrogates, which
#: cannot even be written out as UTF-8.
_UNSHOWN = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """``text`` for a line of plain-text output: each character a terminal would act on
    (see ``_UNSHOWN``) written as an escape instead (``\\n``, ``\\x1b``, ``\\u202e``), so
    that a key, a name or an error from the database is always shown on the one line it
    is printed on and cannot move the cursor, recolour or reorder the text.  Every
    plain-text line that holds user-supplied text goes through it (``--json`` does not:
    its strings are JSON-escaped)."""
    return _UNSHOWN.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def plural(count: int, word: str) -> str:
    """``1 event``, ``2 events``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def duration(value: Any) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def snippet(text: str, width: int) -> str:
    """``text`` on one line, its runs of whitespace (newlines included) made one space,
    cut to ``width`` characters (an ellipsis marks the cut), then :func:`visible`."""
    line = " ".join(text.split())
    return visible(line if len(line) <= width else line[: width - 1] + "…")


def jsonable(value: Any) -> Any:
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return float(value)


def source_line(row: dict[str, Any]) -> str:
    """One source of ``indexer_source_status`` on one line."""
    lag = row["lag"]
    backfill = (
        "back-fill done"
        if row["backfilled"]
        else f"back-fill: {plural(row['backfilled_rows'], 'row')} so far"
    )
    gone = (
        ""
        if row.get("table_present", True)
        else f"; its table {visible(row['source_table'])} is gone: `indexer sources remove`"
    )
    changes = row.get("changes_pending") or 0
    unapplied = f"; {plural(changes, 'change')} not applied yet" if changes else ""
    problem = f"; problem: {visible(row['problem'])}" if row.get("problem") else ""
    return (
        f"{visible(row['source'])}: {row['indexed']} indexed, {row['pending']} pending, "
        f"{row['in_flight']} in flight, {row['failed']} failed, {row['truncated']} truncated; "
        f"{plural(row['chunks'], 'chunk')}; lag {duration(lag)}; {backfill}{unapplied}{gone}"
        f"{problem}{_spent(row)}"
    )


def _spent(row: dict[str, Any]) -> str:
    """What remote models' servers reported (and charged, at a price) over a day."""
    if row.get("provider_tokens") is None:
        return ""
    cost = f", cost {float(row['cost']):.4f}" if row.get("cost") is not None else ""
    return f"; {row['provider_tokens']} server tokens in 24 h{cost}"


def model_line(row: dict[str, Any]) -> str:
    """One registered model (a row of ``indexer_model_status``), ``*`` when active."""
    mark = "*" if row["active"] else " "
    failed = f", {row['failed']} failed: {visible(str(row['last_error']))}" if row["failed"] else ""
    eta = row.get("eta")
    pace = f", {row['per_second']}/s, ETA {eta}" if row["missing"] and row.get("per_second") else ""
    return (
        f"{mark} {visible(str(row['model']))}: {row['dimension']} dimensions"
        f"{' (halfvec)' if row['halfvec'] else ''} in {row['stored_in']}; "
        f"{row['covered']}/{row['chunks']} chunks covered, {row['missing']} missing, "
        f"{row['queued']} queued{pace}{failed}{_index(row)}{_provider(row)}"
    )


#: How ``indexer models list`` says a model's index is not ready (migration 0011).
_INDEX_STATES = {
    "building": "HNSW index being built",
    "broken": "HNSW index to build again (a build was cut off)",
    "none": "HNSW index not built yet (a daemon builds it once the fill is done)",
}


def _index(row: dict[str, Any]) -> str:
    state = row.get("index")
    return f"; {_INDEX_STATES[state]}" if state in _INDEX_STATES else ""


def _provider(row: dict[str, Any]) -> str:
    """A remote model's server: away (since when, why), and what the last day cost."""
    if row.get("kind") != "remote":
        return ""
    parts = []
    if row.get("away_since") is not None:
        parts.append(
            f"server away since {row['away_since']:%Y-%m-%d %H:%M:%S}: "
            f"{visible(str(row['away_error']))} (its work waits)"
        )
    if row.get("provider_tokens") is not None:
        spent = _spent(row)[2:]
        if row.get("cache_saved_tokens"):
            spent += f"; the cache saved about {row['cache_saved_tokens']} tokens"
            if row.get("cache_saved_cost") is not None:
                spent += f" ({float(row['cache_saved_cost']):.4f})"
        parts.append(spent)
    return "".join(f"; {p}" for p in parts)
