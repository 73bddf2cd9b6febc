"""The lowest CPU priority, for the work a daemon does that may wait.

A model filled beside the active one, and its HNSW index built after the fill, may
wait; the application's new rows and searches, and the database's own queries, may
not.  So that work runs at nice :data:`NICE` (19, the lowest priority Linux has): its
model calls on a thread of their own (:mod:`indexer.embedding.background`), and its
statements in PostgreSQL backends niced the same way when the server runs on this
machine (:func:`lower_backend`).  Whatever else wants a core gets it first; when nothing
does, the work runs as fast as before.

Linux applies a nice value within the scheduling group (a session, a systemd service):
the daemon's work ranks below the application's processes of the same group, not below
another service's.  A process may raise its own nice value, or its threads', and those
of processes of its own user; root may raise any.  Where the system refuses, the work
runs at normal priority and the caller says so once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the model's side imports this module, and never the database's
    import psycopg

#: The nice value of the work that may wait.
NICE = 19


def lower(tid: int, nice: int = NICE) -> str | None:
    """Nice a thread (Linux keeps a nice value per thread) or a single-threaded process;
    None when done, else why not."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (AttributeError, OSError) as exc:
        return f"nice {nice} refused: {exc}"
    return None


def lower_backend(conn: psycopg.Connection[Any]) -> str | None:
    """Nice the PostgreSQL backend of ``conn`` when the server runs on this machine (a
    Unix socket, and the backend is a ``postgres`` process here: a pid of a server
    elsewhere may name any process here); None when done, else why not."""
    from psycopg.rows import tuple_row

    if not str(conn.info.host).startswith("/"):
        return "the server is not on this machine"
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
    pid = int(row[0]) if row else 0
    try:
        local = Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        local = False
    if not local:
        return "the server's processes are not visible here"
    return lower(pid)
