"""Sources, the front door: register and unregister an application's table, their
status, and rows of the built-in documents table.

A mixin of :class:`indexer.store.Store`.  Registering and unregistering take a lock on
the application's table, briefly and politely (see ``LOCK_WAIT``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import DictRow

from indexer.exceptions import SourceError, first_line
from indexer.store.protocol import Executes

#: The errors add_source() and remove_source() raise on purpose (a missing table or
#: column, a bad key, no privilege, ...): SourceError with their first line.  Connection
#: errors (OperationalError) stay DatabaseUnavailable.
_SOURCE_ERRORS: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.ProgrammingError,
    psycopg.errors.DataError,
    psycopg.errors.NotSupportedError,
    psycopg.errors.IntegrityError,
    psycopg.errors.InternalError,
)


#: add_source and remove_source take a lock on the application's table (CREATE / DROP
#: TRIGGER).  Each try waits at most LOCK_WAIT in the table's lock queue, so the
#: application's statements never queue behind it for longer; then it steps aside and
#: tries again, LOCK_TRIES times (about ten seconds in all), before giving up.
LOCK_WAIT = "200ms"
LOCK_TRIES = 25

log = logging.getLogger(__name__)


def _source_call(store: Executes, name: str, params: dict[str, Any]) -> DictRow:
    try:
        return store._one(name, params)
    except _SOURCE_ERRORS as exc:
        raise SourceError(first_line(exc)) from exc


def _locking_call(store: Executes, name: str, params: dict[str, Any], doing: str) -> DictRow:
    """A source call that takes a lock on the application's table (see LOCK_WAIT)."""
    for attempt in range(LOCK_TRIES):
        try:
            return _source_call(store, name, {**params, "lock_wait": LOCK_WAIT})
        except psycopg.errors.LockNotAvailable:
            time.sleep(min(0.05 * 2**attempt, 0.5))
    raise SourceError(
        f"cannot {doing}: a transaction of the application holds a lock on the table "
        f"({LOCK_TRIES} tries, each waiting at most {LOCK_WAIT} so as not to hold up its "
        "other statements); try again once it ends"
    )


class SourceQueries:
    """The Store's sources (see the module docstring)."""

    def add_source(
        self: Executes,
        table: str,
        *,
        key: str | None = None,
        text: Sequence[str],
        metadata: Sequence[str] = (),
        metadata_json: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Register ``table`` (its triggers installed; its rows back-filled by the
        daemon); the source's row, with ``estimated_rows`` (None: unknown).  SourceError
        with the database's one line when the table cannot be a source."""
        if isinstance(text, str) or isinstance(metadata, str):
            raise SourceError("text and metadata columns must be lists of names, not one string")
        params = {
            "table": table,
            "key": key,
            "text": list(text),
            "metadata": list(metadata),
            "metadata_json": metadata_json,
            "name": name,
        }
        return dict(_locking_call(self, "add_source", params, f"add source {table}"))

    def remove_source(self: Executes, name: str) -> int:
        """Unregister a source: its triggers dropped, its documents and chunks deleted;
        the number of chunks deleted.  Two transactions: the triggers are dropped (and
        the application's table unlocked) before the chunks are deleted."""
        left = _locking_call(self, "detach_source", {"name": name}, f"remove source {name}")
        if left["detached"] is not None:
            log.warning("%s", left["detached"])
        removed = _locking_call(self, "remove_source", {"name": name}, f"remove source {name}")
        return int(removed["removed"])

    def source_status(self: Executes) -> list[dict[str, Any]]:
        """The ``indexer_source_status`` view, one row per source, by name."""
        return [dict(r) for r in self._execute("source_status")]

    def source_queue_status(self: Executes) -> list[dict[str, Any]]:
        """Per source: pending, in_flight, failed, indexed, lag (cheap; for /metrics)."""
        return [dict(r) for r in self._execute("source_queue_status")]

    def insert_documents(
        self: Executes, contents: Sequence[str], metadata: Sequence[str]
    ) -> list[int]:
        """Rows of the built-in documents table (metadata as JSON text); their ids."""
        rows = self._execute(
            "insert_documents", {"contents": list(contents), "metadata": list(metadata)}
        )
        return [r["id"] for r in rows]
