"""Wake-ups: LISTEN for the NOTIFY that the chunks trigger sends for new or changed rows.

LISTEN needs a session of its own that stays open between statements, so the listener
holds one dedicated connection, outside any pool.
"""

from __future__ import annotations

from indexer.db import connect as db
from indexer.exceptions import DatabaseUnavailable

#: The channel the trigger of migration 0001 notifies (a test checks that the two agree).
NOTIFY_CHANNEL = "indexer_chunks"


class Listener:
    """Blocks until rows need work, or a timeout passes.  Not thread-safe: one per worker."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._conn: db.Connection | None = None

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a NOTIFY about new or changed rows.

        True when one arrived, and also right after LISTEN starts (or restarts after an
        outage): a row committed before that sent its NOTIFY to nobody, so the caller
        must look once more.  ``timeout`` 0 only looks at what the connection has
        received (the busy worker's question between two slices of its fill).
        """
        if self._conn is None or self._conn.closed:
            conn = db.connect(self.dsn, self.schema, autocommit=True, vector=False)
            try:
                with db.wrap_errors("listening for notifications"):
                    conn.execute("LISTEN " + NOTIFY_CHANNEL)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return True
        try:
            with db.wrap_errors("waiting for notifications"):
                for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                    return True
        except DatabaseUnavailable:
            self.close()
            raise
        return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
