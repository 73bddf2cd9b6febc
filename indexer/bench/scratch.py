"""The bench's own schemas: created, migrated, used by one section, dropped.

Everything happens in scratch schemas (``indexer_bench_<section>``, marked by a
comment) that are dropped at the end; the user's own schemas are never touched.  This
is a measuring tool: the SQL it needs to set up its tables lives here, not in the
store's named queries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from psycopg import sql

from indexer.bench.context import Context
from indexer.bench.daemons import stop_children
from indexer.db import connect as db
from indexer.db import migrate
from indexer.exceptions import InvalidInput

SCHEMA_MARKER = "scratch schema of `indexer bench`: dropped when it ends"


def one(conn: db.Connection, query: str, params: Any = None) -> Any:
    """The first column of the first row (None if there is no row)."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else next(iter(row.values()))


def count_state(conn: db.Connection, state: str) -> int:
    """Rows of ``chunks`` in ``state``: each section checks its table holds what it loaded."""
    return int(one(conn, "SELECT count(*) FROM chunks WHERE state = %s", (state,)))


def connect_admin(dsn: str) -> db.Connection:
    """A connection to the bench's database, with pgvector enabled in ``public``.

    The scratch schemas are dropped with CASCADE: the extension must never live in
    one of them, or dropping it would take every vector column in the database along.
    """
    conn = db.connect(dsn, "public", autocommit=True, vector=False)
    exists = one(conn, "SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    if exists is None:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
    conn.close()
    return db.connect(dsn, "public", autocommit=True)


def _drop_scratch(admin: db.Connection, schema: str, marker: str, hint: str) -> None:
    row = admin.execute(
        "SELECT obj_description(oid, 'pg_namespace') AS comment FROM pg_namespace"
        " WHERE nspname = %s",
        (schema,),
    ).fetchone()
    if row is None:
        return
    if row["comment"] != marker:
        raise InvalidInput(f"schema {schema!r} exists and was not made by {hint}")
    home = one(
        admin,
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'vector'",
    )
    if home == schema:
        raise InvalidInput(f"the vector extension lives in {schema!r}: not dropping it")
    admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def migrated_schema(
    dsn: str, admin: db.Connection, schema: str, *, marker: str, hint: str, migrated: bool = True
) -> Iterator[db.Connection]:
    """A freshly migrated schema marked by the comment ``marker`` (and an autocommit
    connection into it), dropped afterwards.  A schema of that name not so marked is
    refused (``hint``: who would have made it, and what to do instead).  With
    ``migrated=False`` the schema is left empty, for a section that measures tables of
    its own rather than the indexer's."""
    _drop_scratch(admin, schema, marker, hint)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    admin.execute(
        sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(schema), sql.Literal(marker))
    )
    conn: db.Connection | None = None
    try:
        if migrated:
            migrate.upgrade(dsn, schema)
        conn = db.connect(dsn, schema, autocommit=True)
        yield conn
    finally:
        if conn is not None:
            conn.close()
        _drop_scratch(admin, schema, marker, hint)


#: Who makes the scratch schemas, for the refusal of one it did not make.
SCHEMA_HINT = "`indexer bench`; choose another prefix with --bench-schema"


@contextlib.contextmanager
def scratch_schema(ctx: Context, section: str) -> Iterator[tuple[str, db.Connection]]:
    """A freshly migrated schema (and a connection into it), dropped afterwards.

    Daemons started meanwhile are stopped first: they hold connections into it.
    """
    schema = ctx.schema(section)
    with migrated_schema(
        ctx.dsn, ctx.admin, schema, marker=SCHEMA_MARKER, hint=SCHEMA_HINT
    ) as conn:
        try:
            yield schema, conn
        finally:
            stop_children(ctx.children)
