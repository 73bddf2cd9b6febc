"""Schema migrations (Alembic) run from the installed package, and the schema check.

The Alembic scripts are the repository's ``migrations/`` folder, installed as the
``indexer._migrations`` package, so a non-editable install can migrate.  The daemon
never migrates on its own: it checks the revision and tells the user to run
``indexer migrate`` (production teams decide when their schema changes).
"""

from __future__ import annotations

import contextlib
import importlib.resources
from collections.abc import Iterator
from typing import Any, NamedTuple

import psycopg
import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Connection as SAConnection
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from indexer.db.connect import (
    CONNECT_TIMEOUT,
    TRANSIENT_ERRORS,
    Connection,
    check_dsn,
    connect_errors,
    resolve_dsn,
    set_search_path,
    wrap_errors,
)
from indexer.exceptions import (
    DatabaseUnavailable,
    InsufficientPrivilege,
    SchemaNotMigrated,
    UnsupportedDatabase,
    first_line,
)
from indexer.settings import Settings

_LOCK_KEY = 0x1DE8E5  # advisory lock serialising concurrent `indexer migrate` runs


def _config(schema: str) -> Config:
    config = Config()
    location = importlib.resources.files("indexer._migrations")
    config.set_main_option("script_location", str(location))
    config.attributes["schema"] = schema
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config("public")).get_current_head()
    assert head is not None
    return head


@contextlib.contextmanager
def _alembic_connection(dsn: str, schema: str) -> Iterator[SAConnection]:
    """A SQLAlchemy connection holding the migration lock.

    SQLAlchemy wraps every driver error (the creator's too) in its own exception with a
    traceback-sized message; the creator raises the indexer's errors instead, which
    SQLAlchemy lets through, and a connection lost later is unwrapped here.
    """
    check_dsn(dsn)

    def creator() -> psycopg.Connection[Any]:
        with connect_errors(dsn):
            raw = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        try:
            check_encoding(raw)
            raw.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            set_search_path(raw, schema)
            raw.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            raw.autocommit = False
        except BaseException:
            raw.close()
            raise
        return raw

    engine = create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    except sqlalchemy.exc.DBAPIError as exc:
        if isinstance(exc.orig, TRANSIENT_ERRORS):
            raise DatabaseUnavailable(f"cannot migrate: {first_line(exc.orig)}") from exc
        raise
    finally:
        engine.dispose()


@contextlib.contextmanager
def connect_for_alembic() -> Iterator[tuple[SAConnection, str]]:
    """For `alembic` run by hand from a checkout: the same settings as `indexer`."""
    settings = Settings.from_env()
    with _alembic_connection(resolve_dsn(settings), settings.schema) as conn:
        yield conn, settings.schema


class Revisions(NamedTuple):
    """The schema's revision before and after an upgrade (None: no indexer tables)."""

    before: str | None
    after: str | None


def _revision(conn: SAConnection, schema: str) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table_schema": schema})
    revision = context.get_current_revision()
    conn.commit()  # end the transaction the read began, as Alembic expects to begin its own
    return revision


def upgrade(dsn: str, schema: str, revision: str = "head") -> Revisions:
    """Upgrade ``schema`` to ``revision``; the revisions tell whether anything changed."""
    with _alembic_connection(dsn, schema) as conn:
        before = _revision(conn, schema)
        config = _config(schema)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        conn.commit()
        return Revisions(before, _revision(conn, schema))


def downgrade(dsn: str, schema: str, revision: str) -> None:
    with _alembic_connection(dsn, schema) as conn:
        config = _config(schema)
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
        conn.commit()


def check_encoding(conn: psycopg.Connection[Any]) -> None:
    """Raise UnsupportedDatabase unless the database is UTF8.

    In any other encoding texts may not fit, and in SQL_ASCII the driver hands back
    bytes instead of text.  The encoding is a parameter the server reports at connection
    time, so this costs no query.
    """
    encoding = conn.info.parameter_status("server_encoding")
    if encoding != "UTF8":
        raise UnsupportedDatabase(
            f"database {conn.info.dbname!r} uses the {encoding or 'unknown'} encoding; "
            "the indexer needs a UTF8 database "
            "(CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
        )


def current_revision(conn: Connection, schema: str) -> str | None:
    """The schema's revision (None: no indexer tables).  Raises InsufficientPrivilege
    (one line, with what to grant) when the tables exist but this role may not read them."""
    with wrap_errors("checking the schema"):
        table = sql.SQL("{}.alembic_version").format(sql.Identifier(schema)).as_string(conn)
        found = (
            conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL AS present,"
                " has_schema_privilege(current_user, %s, 'USAGE')"
                " AND coalesce(has_table_privilege(to_regclass(%s), 'SELECT'), false) AS readable",
                (table, schema, table),
            ).fetchone()
            if _schema_exists(conn, schema)
            else None
        )
        if found is None or not found["present"]:
            return None
        if not found["readable"]:
            role = conn.info.parameter_status("session_authorization") or "this role"
            raise InsufficientPrivilege(
                f"role {role} may not use the indexer's tables in schema {schema!r}: ask its "
                f"owner to run SELECT {sql.Identifier(schema).as_string(conn)}.grant_search("
                f"'{role}') (to search) or grant_write (to write rows and documents)"
            )
        row = conn.execute(
            sql.SQL("SELECT version_num FROM {}.alembic_version").format(sql.Identifier(schema))
        ).fetchone()
    return None if row is None else str(row["version_num"])


def _schema_exists(conn: Connection, schema: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def check_schema(conn: Connection, schema: str) -> None:
    """Raise SchemaNotMigrated unless the schema is at the revision this code expects
    (UnsupportedDatabase if the database is not UTF8)."""
    check_encoding(conn)
    current = current_revision(conn, schema)
    head = head_revision()
    if current is None:
        raise SchemaNotMigrated(
            f"schema {schema!r} has no indexer tables yet: run `indexer migrate`"
        )
    if current != head:
        raise SchemaNotMigrated(
            f"schema {schema!r} is at revision {current}, this indexer needs {head}: "
            "run `indexer migrate`"
        )
