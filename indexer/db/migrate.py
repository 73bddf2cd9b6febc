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
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Connection as SAConnection
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from indexer.db.connect import Connection, resolve_dsn, set_search_path, wrap_errors
from indexer.exceptions import DatabaseUnavailable, SchemaNotMigrated
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
    def creator() -> psycopg.Connection[Any]:
        raw = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        raw.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        set_search_path(raw, schema)
        raw.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        raw.autocommit = False
        return raw

    engine = create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot migrate: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        engine.dispose()


@contextlib.contextmanager
def connect_for_alembic() -> Iterator[tuple[SAConnection, str]]:
    """For `alembic` run by hand from a checkout: the same settings as `indexer`."""
    settings = Settings.from_env()
    with _alembic_connection(resolve_dsn(settings), settings.schema) as conn:
        yield conn, settings.schema


def upgrade(dsn: str, schema: str, revision: str = "head") -> None:
    with _alembic_connection(dsn, schema) as conn:
        config = _config(schema)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        conn.commit()


def downgrade(dsn: str, schema: str, revision: str) -> None:
    with _alembic_connection(dsn, schema) as conn:
        config = _config(schema)
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
        conn.commit()


def current_revision(conn: Connection, schema: str) -> str | None:
    with wrap_errors("checking the schema"):
        exists = conn.execute(
            "SELECT 1 FROM information_schema.tables"
            " WHERE table_schema = %s AND table_name = 'alembic_version'",
            (schema,),
        ).fetchone()
        if exists is None:
            return None
        row = conn.execute(
            sql.SQL("SELECT version_num FROM {}.alembic_version").format(sql.Identifier(schema))
        ).fetchone()
    return None if row is None else str(row["version_num"])


def check_schema(conn: Connection, schema: str) -> None:
    """Raise SchemaNotMigrated unless the schema is at the revision this code expects."""
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
