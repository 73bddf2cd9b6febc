"""Test fixtures: a real embedded PostgreSQL (pgvector included), no mocks.

One server per test session, in ``.tmp/test-pgdata`` (INDEXER_TEST_DATA_DIR to move
it).  The schema is migrated once into a template database; each test that needs a
database gets its own ``CREATE DATABASE ... TEMPLATE`` copy, so tests are isolated
and cheap.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from indexer.db import migrate, server
from indexer.db.connect import Connection, connect
from indexer.embedding import Embedder
from indexer.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TMP = ROOT / ".tmp"
TEMPLATE = "indexer_test_template"


def with_database(dsn: str, database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("INDEXER_TEST_DATA_DIR", TMP / "test-pgdata"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # The server runs as its own system user when we are root: it must be able to
    # reach the directory.
    path.parent.chmod(0o755)
    return path


def _create_database(server: str, name: str, template: str | None = None) -> str:
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(statement)
    return with_database(server, name)


def _drop_database(server: str, name: str) -> None:
    with psycopg.connect(with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def server_dsn(data_dir: Path) -> Iterator[str]:
    dsn = server.start(data_dir)
    migrate.upgrade(_create_database(dsn, TEMPLATE), "public")
    yield dsn
    server.stop(data_dir)


@pytest.fixture
def database(server_dsn: str) -> Iterator[str]:
    """DSN of a fresh, migrated database for this test alone."""
    name = "t_" + uuid.uuid4().hex[:16]
    yield _create_database(server_dsn, name, template=TEMPLATE)
    _drop_database(server_dsn, name)


@pytest.fixture
def empty_database(server_dsn: str) -> Iterator[str]:
    """DSN of a fresh database with nothing in it (not even pgvector)."""
    name = "e_" + uuid.uuid4().hex[:16]
    yield _create_database(server_dsn, name)
    _drop_database(server_dsn, name)


@pytest.fixture
def conn(database: str) -> Iterator[Connection]:
    c = connect(database, "public", autocommit=True)
    yield c
    c.close()


@pytest.fixture(scope="session")
def model_cache() -> Path:
    return TMP / "models"


@pytest.fixture(scope="session")
def embedder(model_cache: Path) -> Embedder:
    return Embedder(cache_dir=model_cache)


@pytest.fixture
def settings(database: str, model_cache: Path) -> Settings:
    return Settings(
        database_url=database,
        model_cache=model_cache,
        poll_interval=0.5,
        lease_seconds=30,
        retry_base_seconds=0.2,
    )
