"""Migrations: single head, upgrade from empty, down and up again, schema checks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql

from indexer import cli
from indexer.db import migrate
from indexer.db.connect import connect
from indexer.exceptions import ExtensionMissing, SchemaNotMigrated, UnsupportedDatabase
from indexer.store import Store

from ..conftest import ROOT, with_database
from ..helpers import cli_env, run_cli

TABLES = {"chunks", "events"}


def _tables(dsn: str, schema: str) -> set[str]:
    with connect(dsn, schema, autocommit=True, vector=False) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return {r["table_name"] for r in rows}


def test_single_head() -> None:
    config = Config(str(ROOT / "alembic.ini"))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert heads == [migrate.head_revision()]


def test_upgrade_from_empty_then_down_and_up(empty_database: str) -> None:
    migrate.upgrade(empty_database, "public")
    assert _tables(empty_database, "public") >= TABLES
    with connect(empty_database, "public") as conn:
        migrate.check_schema(conn, "public")
        views = conn.execute("SELECT 1 FROM indexer_status").fetchall()
        assert len(views) == 1

    migrate.downgrade(empty_database, "public", "base")
    assert not TABLES & _tables(empty_database, "public")
    with connect(empty_database, "public") as conn, pytest.raises(SchemaNotMigrated):
        migrate.check_schema(conn, "public")

    migrate.upgrade(empty_database, "public")
    assert _tables(empty_database, "public") >= TABLES


def test_upgrade_is_idempotent(database: str) -> None:
    migrate.upgrade(database, "public")
    migrate.upgrade(database, "public")
    with connect(database, "public") as conn:
        migrate.check_schema(conn, "public")


def test_schema_name_is_quoted_as_an_identifier(empty_database: str) -> None:
    schema = "Tenant_A"  # needs quoting: unquoted it would fold to tenant_a
    migrate.upgrade(empty_database, schema)
    assert _tables(empty_database, schema) >= TABLES
    assert not TABLES & _tables(empty_database, "tenant_a")
    with Store(empty_database, schema) as store:
        assert store.status()["backlog"] == 0


def test_unmigrated_database_says_which_command_to_run(empty_database: str) -> None:
    with connect(empty_database, "public", vector=False) as conn:
        conn.execute("CREATE EXTENSION vector")
    with Store(empty_database, "public") as store, pytest.raises(SchemaNotMigrated) as err:
        store.status()
    assert "indexer migrate" in str(err.value)


def test_missing_extension_is_reported(empty_database: str) -> None:
    with pytest.raises(ExtensionMissing) as err:
        connect(empty_database, "public")
    assert "indexer migrate" in str(err.value)


def test_schema_behind_names_both_revisions(database: str) -> None:
    with connect(database, "public") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0000'")
        with pytest.raises(SchemaNotMigrated) as err:
            migrate.check_schema(conn, "public")
    assert "0000" in str(err.value)
    assert migrate.head_revision() in str(err.value)


@pytest.fixture
def sql_ascii_database(server_dsn: str) -> Iterator[str]:
    """A database in the SQL_ASCII encoding, which PostgreSQL accepts and the indexer
    cannot use (the driver returns its text as bytes)."""
    name = "a_" + uuid.uuid4().hex[:16]
    with psycopg.connect(with_database(server_dsn, "postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
                " TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    yield with_database(server_dsn, name)
    with psycopg.connect(with_database(server_dsn, "postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_migrate_refuses_a_database_that_is_not_utf8(
    sql_ascii_database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UnsupportedDatabase) as err:
        migrate.upgrade(sql_ascii_database, "public")
    assert "SQL_ASCII" in str(err.value) and "UTF8" in str(err.value)
    assert "\n" not in str(err.value)
    assert not TABLES & _tables(sql_ascii_database, "public")  # nothing was created

    monkeypatch.setenv("DATABASE_URL", sql_ascii_database)
    assert cli.main(["migrate"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("indexer: error: ") and "UTF8" in line


def test_the_start_check_refuses_a_database_that_is_not_utf8(
    sql_ascii_database: str, model_cache: Path
) -> None:
    # A schema that looks migrated (as one left half-done by an older indexer would).
    with psycopg.connect(sql_ascii_database, autocommit=True) as raw:
        raw.execute("CREATE EXTENSION vector")
        raw.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        raw.execute("INSERT INTO alembic_version VALUES (%s)", (migrate.head_revision(),))
    with (
        Store(sql_ascii_database, "public", check=False) as store,
        pytest.raises(UnsupportedDatabase) as err,
    ):
        store.check()
    assert "SQL_ASCII" in str(err.value)

    env = cli_env(sql_ascii_database, model_cache)
    result = run_cli(["run", "--once"], env, timeout=120)
    assert result.returncode == 1, result.stderr
    # The daemon's start line (which database it uses) comes first; then the error.
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("indexer: error: ") and "UTF8" in line
    assert "Traceback" not in result.stderr


def test_the_first_migrate_of_another_schema_puts_pgvector_in_public(empty_database: str) -> None:
    migrate.upgrade(empty_database, "a")
    with connect(empty_database, "public", autocommit=True, vector=False) as conn:
        row = conn.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'vector'"
        ).fetchone()
    assert row is not None and row["nspname"] == "public"
    migrate.upgrade(empty_database, "public")
    migrate.upgrade(empty_database, "b")
    for schema in ("a", "public", "b"):
        with Store(empty_database, schema) as store:
            assert store.status()["backlog"] == 0


def test_pgvector_in_a_schema_of_its_own_is_found(empty_database: str) -> None:
    # As an earlier version left it: the extension in the first schema migrated.
    with connect(empty_database, "public", autocommit=True, vector=False) as conn:
        conn.execute("CREATE SCHEMA a")
        conn.execute("CREATE EXTENSION vector SCHEMA a")
    migrate.upgrade(empty_database, "public")
    with Store(empty_database, "public") as store:
        assert store.status()["backlog"] == 0
