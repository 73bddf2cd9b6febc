"""indexer.models and the migrated schema agree, so the two can never drift apart.

Two comparisons: Alembic's autogenerate (what ``alembic check`` runs: tables, columns,
types, nullability, server defaults, identity, comments, indexes by name and columns),
and the catalog itself, for what autogenerate does not look at (CHECK constraints, an
index's method, operator class, WITH parameters and WHERE clause): the models' DDL is
created in a scratch schema and every definition is compared with the migrated one.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata, produce_migrations
from alembic.runtime.migration import MigrationContext
from psycopg import sql
from sqlalchemy import Connection, MetaData, create_engine, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from indexer.db import migrate
from indexer.db.connect import connect
from indexer.models import DIMENSIONS, STATES, Base, Chunk, Event

from ..conftest import ROOT
from ..helpers import cli_env
from .sqla import engine_for, sqlalchemy_url

COMPARE = {"compare_type": True, "compare_server_default": True}
SCRATCH = "indexer_models_ddl"

_COLUMNS = """
SELECT c.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
       a.attidentity AS identity, pg_get_expr(d.adbin, d.adrelid) AS default_value,
       col_description(c.oid, a.attnum) AS comment
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = :schema AND c.relkind = 'r' AND c.relname = ANY(:tables)
ORDER BY c.relname, a.attnum
"""
_TABLES = """
SELECT c.relname AS table_name, obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relkind = 'r' AND c.relname = ANY(:tables)
ORDER BY 1
"""
# A foreign key names the table it references with its schema (unless on the
# search_path): cut too, as for the indexes below.
_CONSTRAINTS = """
SELECT c.relname AS table_name, con.conname AS name, con.contype AS kind,
       replace(pg_get_constraintdef(con.oid), ' REFERENCES ' || quote_ident(:schema) || '.',
               ' REFERENCES ') AS definition
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relname = ANY(:tables)
ORDER BY 1, 2
"""
# The table's schema is cut from each definition: it is the one thing that differs.
_INDEXES = """
SELECT t.relname AS table_name, i.relname AS name,
       replace(pg_get_indexdef(x.indexrelid), ' ON ' || quote_ident(:schema) || '.', ' ON ')
           AS definition
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = :schema AND t.relname = ANY(:tables)
ORDER BY 1, 2
"""


def catalog(conn: Connection, schema: str, tables: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every definition of ``tables`` in ``schema`` that the catalog holds."""
    params = {"schema": schema, "tables": tables}
    return {
        name: [dict(row._mapping) for row in conn.execute(text(query), params)]
        for name, query in (
            ("tables", _TABLES),
            ("columns", _COLUMNS),
            ("constraints", _CONSTRAINTS),
            ("indexes", _INDEXES),
        )
    }


def model_catalog(conn: Connection, metadata: MetaData) -> dict[str, list[dict[str, Any]]]:
    """The catalog of ``metadata``'s tables as SQLAlchemy creates them (scratch schema)."""
    conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCRATCH}" CASCADE'))
    conn.execute(text(f'CREATE SCHEMA "{SCRATCH}"'))
    try:
        metadata.create_all(conn.execution_options(schema_translate_map={None: SCRATCH}))
        return catalog(conn, SCRATCH, sorted(metadata.tables))
    finally:
        conn.rollback()


def differences(database: str, metadata: MetaData) -> tuple[list[Any], list[str]]:
    """Alembic's differences, and the catalog entries that differ, between ``metadata``
    and the migrated public schema of ``database``."""
    with engine_for(database) as engine, engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=COMPARE)
        alembic_diffs = compare_metadata(context, metadata)
        conn.rollback()
        migrated = catalog(conn, "public", sorted(metadata.tables))
        conn.rollback()
        modelled = model_catalog(conn, metadata)
    catalog_diffs = [
        f"{part}: migrated {row} / models {other}"
        for part in migrated
        for row, other in zip(migrated[part], modelled[part], strict=False)
        if row != other
    ] + [
        f"{part}: {len(migrated[part])} migrated, {len(modelled[part])} in the models"
        for part in migrated
        if len(migrated[part]) != len(modelled[part])
    ]
    return alembic_diffs, catalog_diffs


def copy_of_models() -> MetaData:
    copy = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(copy)
    return copy


def test_models_and_migrations_agree(database: str) -> None:
    alembic_diffs, catalog_diffs = differences(database, Base.metadata)
    assert alembic_diffs == []
    assert catalog_diffs == []


def test_alembic_upgrade_head_from_the_checkout_makes_the_modelled_schema(
    empty_database: str, model_cache: Path
) -> None:
    # `alembic upgrade head` with alembic.ini at the top, as a contributor runs it
    # (`indexer migrate`, from the installed package, is tested with the CLI).
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=cli_env(empty_database, model_cache),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert differences(empty_database, Base.metadata) == ([], [])


def test_alembic_check_finds_nothing_to_generate(database: str) -> None:
    # What `alembic check` does: the database is at head, and autogenerate against the
    # models would write an empty migration.
    with engine_for(database) as engine, engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"target_metadata": Base.metadata, **COMPARE}
        )
        assert context.get_current_revision() == migrate.head_revision()
        script = produce_migrations(context, Base.metadata)
    assert script.upgrade_ops is not None
    assert script.upgrade_ops.is_empty(), script.upgrade_ops.as_diffs()


def test_the_alembic_check_command_passes_from_the_checkout(
    database: str, model_cache: Path, conn: Any
) -> None:
    # An application's own table in the same schema is not the indexer's business.
    conn.execute("CREATE TABLE articles (id bigint PRIMARY KEY, body text)")
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "check"],
        cwd=ROOT,
        env=cli_env(database, model_cache),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def _drop_column(metadata: MetaData) -> None:
    chunks = metadata.tables["chunks"]
    chunks._columns.remove(chunks.c.attempts)


def _index(metadata: MetaData, name: str) -> Any:
    return next(i for t in metadata.tables.values() for i in t.indexes if i.name == name)


def _other_opclass(metadata: MetaData) -> None:
    index = _index(metadata, "chunks_embedding_idx")
    index.dialect_options["postgresql"]["ops"] = {"embedding": "vector_ip_ops"}


def _other_partial_index(metadata: MetaData) -> None:
    index = _index(metadata, "chunks_failed_idx")
    index.dialect_options["postgresql"]["where"] = text("state = 'pending'")


def _other_check(metadata: MetaData) -> None:
    check = next(c for c in metadata.tables["chunks"].constraints if c.name == "chunks_state_check")
    check.sqltext = text("state IN ('pending', 'embedded')")  # type: ignore[attr-defined]


def _extra_table(metadata: MetaData) -> None:
    metadata.remove(metadata.tables["events"])


@pytest.mark.parametrize(
    ("change", "seen_by"),
    [
        (_drop_column, "alembic"),
        (_extra_table, "alembic"),  # a migrated table with no model
        (_other_opclass, "catalog"),
        (_other_partial_index, "catalog"),
        (_other_check, "catalog"),
    ],
    ids=["column", "table", "opclass", "partial-index", "check"],
)
def test_the_comparison_sees_a_drift(
    database: str, change: Callable[[MetaData], None], seen_by: str
) -> None:
    drifted = copy_of_models()
    change(drifted)
    alembic_diffs, catalog_diffs = differences(database, drifted)
    assert (alembic_diffs if seen_by == "alembic" else catalog_diffs) != []


def test_the_state_check_is_the_one_the_daemon_uses(conn: Any) -> None:
    rows = conn.execute(
        "SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint WHERE conname = %s",
        ("chunks_state_check",),
    ).fetchall()
    assert len(rows) == 1
    assert all(f"'{state}'::text" in rows[0]["d"] for state in STATES)


def test_the_orm_round_trip(database: str) -> None:
    vector = np.zeros(DIMENSIONS, dtype=np.float32)
    vector[0] = 1.0
    with engine_for(database) as engine, Session(engine) as session:
        pending = Chunk(content="to embed", metadata_={"topic": "db"})
        restored = Chunk(content="restored", embedding=vector, embedding_model="m")
        event = Event(kind="worker_started", worker_id=uuid.uuid4())
        session.add_all([pending, restored, event])
        session.commit()
        # The trigger and the server defaults filled what the application left out.
        assert (pending.state, pending.content_version, pending.attempts) == ("pending", 1, 0)
        assert pending.metadata_ == {"topic": "db"} and pending.embedding is None
        assert restored.state == "embedded" and restored.embedded_at is not None
        assert np.array_equal(np.asarray(restored.embedding), vector)
        assert event.id > 0 and event.chunk_ids == [] and event.detail == {}
        pending.content = "changed"
        session.commit()
        assert pending.content_version == 2


def test_a_non_public_schema_through_schema_translate_map(database: str) -> None:
    migrate.upgrade(database, "tenant_a")
    with engine_for(database) as engine:
        tenant = engine.execution_options(schema_translate_map={None: "tenant_a"})
        with Session(tenant) as session:
            session.add(Chunk(content="hello tenant"))
            session.commit()
            assert session.scalars(select(Chunk.content)).all() == ["hello tenant"]
    # The docs' other way (how-to/sqlalchemy.md): the schema first on the search_path, no
    # translate map.
    on_path = create_engine(
        sqlalchemy_url(database),
        poolclass=NullPool,
        connect_args={"options": "-csearch_path=tenant_a,public"},
    )
    try:
        with Session(on_path) as session:
            assert session.scalars(select(Chunk.content)).all() == ["hello tenant"]
    finally:
        on_path.dispose()
    for schema, expected in (("tenant_a", 1), ("public", 0)):
        with connect(database, schema) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) AS n FROM {}.chunks").format(sql.Identifier(schema))
            ).fetchone()
        assert row is not None and row["n"] == expected
