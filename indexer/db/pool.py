"""A psycopg_pool pool of ready connections: search_path set, pgvector registered.

Every pooled connection goes through :func:`prepare` once, when the pool opens it, and
is checked (one empty round trip) each time it is handed out, so a connection broken
by a server restart is replaced instead of failing the next statement.  The pool
reconnects in the background; a caller waits at most ``timeout`` seconds for a
connection and then gets ``PoolTimeout`` (an ``OperationalError``, which
:func:`~indexer.db.connect.wrap_errors` turns into ``DatabaseUnavailable``).
"""

from __future__ import annotations

from collections.abc import Callable

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from indexer.db.connect import (
    APPLICATION_NAME,
    CONNECT_TIMEOUT,
    Connection,
    register,
    set_session,
)


def open_pool(
    dsn: str,
    schema: str,
    *,
    size: int,
    timeout: float,
    configure: Callable[[Connection, tuple[int, ...]], None] | None = None,
    name: str = "indexer",
) -> ConnectionPool[Connection]:
    """A pool of at most ``size`` connections, opened at once (it connects in the
    background: an unreachable database is noticed by the first caller, not here).

    ``configure`` gets each new connection and the pgvector version read while
    registering its types."""

    def prepare(conn: Connection) -> None:
        set_session(conn, schema)
        pgvector = register(conn)
        if configure is not None:
            configure(conn, pgvector)

    return ConnectionPool(
        dsn,
        connection_class=Connection,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": APPLICATION_NAME,
        },
        min_size=1,
        max_size=size,
        open=True,
        configure=prepare,
        check=ConnectionPool.check_connection,
        timeout=timeout,
        name=name,
    )
