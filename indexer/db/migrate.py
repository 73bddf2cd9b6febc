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
    quote_name,
    resolve_dsn,
    set_session,
    wrap_errors,
)
from indexer.exceptions import (
    DatabaseUnavailable,
    ExtensionMissing,
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
            _create_schema(raw, schema)
            set_session(raw, schema)
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
        if isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise _denied(schema, exc.orig) from exc
        raise
    except psycopg.errors.InsufficientPrivilege as exc:  # a migration's own statement
        raise _denied(schema, exc) from exc
    finally:
        engine.dispose()


def _role(conn: psycopg.Connection[Any]) -> str:
    return conn.info.parameter_status("session_authorization") or conn.info.user


def _create_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create ``schema`` unless it exists: a schema an administrator created for the
    indexer's role (CREATE SCHEMA ix AUTHORIZATION indexer) needs no CREATE on the
    database, which CREATE SCHEMA IF NOT EXISTS would ask for all the same."""
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if exists is not None:
        return
    row = conn.execute(
        "SELECT has_database_privilege(current_database(), 'CREATE'), current_database()"
    ).fetchone()
    assert row is not None
    may_create, database = row
    if not may_create:
        role = quote_name(_role(conn))
        raise InsufficientPrivilege(
            f"role {role} may not create schema {schema!r} (it needs CREATE on database "
            f"{database!r}): ask an administrator to run GRANT CREATE ON DATABASE "
            f"{quote_name(database)} TO {role}; or to create the schema for it: "
            f"CREATE SCHEMA {quote_name(schema)} AUTHORIZATION {role};"
        )
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def _check_upgrade(conn: psycopg.Connection[Any], schema: str) -> None:
    """Raise the one line for a privilege an upgrade of ``schema`` needs and this role
    lacks (pgvector's extension, CREATE on the schema, owning the indexer's tables),
    before a migration fails half-way with the server's message."""
    role = quote_name(_role(conn))
    row = conn.execute(
        "SELECT e.extversion IS NOT NULL, a.name IS NOT NULL,"
        " coalesce(v.superuser, true) AND NOT r.rolsuper,"
        " coalesce(v.trusted, false) AND has_database_privilege(current_database(), 'CREATE'),"
        " current_database()"
        " FROM pg_roles r"
        " LEFT JOIN pg_extension e ON e.extname = 'vector'"
        " LEFT JOIN pg_available_extensions a ON a.name = 'vector'"
        " LEFT JOIN pg_available_extension_versions v"
        "   ON v.name = 'vector' AND v.version = a.default_version"
        " WHERE r.rolname = current_user"
    ).fetchone()
    assert row is not None
    installed, available, needs_superuser, trusted_here, database = row
    if not installed and not available:
        raise ExtensionMissing(
            "the pgvector extension is not installed on this PostgreSQL server "
            "(install pgvector 0.7 or newer, e.g. the pgvector/pgvector image)"
        )
    if not installed and needs_superuser and not trusted_here:
        raise InsufficientPrivilege(
            f"role {role} may not create the pgvector extension in database {database!r} "
            "(only a superuser may): ask an administrator to run CREATE EXTENSION vector; "
            "in that database, then run `indexer migrate` again"
        )
    _check_owner(conn, schema)
    row = conn.execute(
        "SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n WHERE n.nspname = %s",
        (schema,),
    ).fetchone()
    if row is not None and not row[0]:
        raise InsufficientPrivilege(
            f"role {role} may not create tables in schema {schema!r}: ask an administrator "
            f"to run GRANT CREATE ON SCHEMA {quote_name(schema)} TO {role}; or give the "
            f"indexer a schema of its own (CREATE SCHEMA ix AUTHORIZATION {role}; and "
            "INDEXER_SCHEMA=ix)"
        )


def _check_owner(conn: psycopg.Connection[Any], schema: str, *, unreadable: bool = False) -> None:
    """Raise InsufficientPrivilege when the indexer's tables in ``schema`` belong to a
    role whose rights this one lacks (with ``unreadable``: only when this role may not
    even read their revision)."""
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner), r.rolsuper,"
        " has_table_privilege(to_regclass(format('%%I.alembic_version', n.nspname)), 'SELECT')"
        " FROM pg_namespace n"
        " JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'chunks'"
        " JOIN pg_roles r ON r.oid = c.relowner"
        " WHERE n.nspname = %s AND NOT pg_has_role(current_user, c.relowner, 'USAGE')",
        (schema,),
    ).fetchone()
    if row is None:
        return
    owner, superuser, readable = row
    if unreadable and readable:
        return
    role = quote_name(_role(conn))
    member = (
        ""
        if superuser  # never advise membership in a superuser
        else f", or ask an administrator to run GRANT {quote_name(owner)} TO {role};"
    )
    raise InsufficientPrivilege(
        f"role {role} may not upgrade the indexer's tables in schema {schema!r}: they "
        f"belong to role {owner}; run `indexer migrate` as {owner}{member}"
    )


def _denied(schema: str, exc: psycopg.Error) -> InsufficientPrivilege:
    """A privilege a migration needed and this role lacks (the checks above name the
    usual ones; this says the server's line, and who may do something about it)."""
    return InsufficientPrivilege(
        f"cannot migrate schema {schema!r}: {first_line(exc)}; run `indexer migrate` as the "
        "role that owns the schema, or ask an administrator to grant this role that privilege"
    )


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
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            _check_owner(raw, schema, unreadable=True)
        finally:
            raw.rollback()  # the checks only read: end their transaction
        before = _revision(conn, schema)
        if before != (head_revision() if revision == "head" else revision):
            try:
                _check_upgrade(raw, schema)
            finally:
                raw.rollback()
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
