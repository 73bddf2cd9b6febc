"""Test fixtures: a real embedded PostgreSQL (pgvector included), no mocks.

One server per test session, in ``.tmp/test-pgdata`` (INDEXER_TEST_DATA_DIR to move
it).  The schema is migrated once into a template database; each test that needs a
database gets its own ``CREATE DATABASE ... TEMPLATE`` copy, so tests are isolated
and cheap.

``INDEXER_TEST_POSTGRES=url`` runs it against a server of your own: the DSN in
``INDEXER_TEST_SERVER_URL`` (a role that may create databases and roles; pgvector
installed on the server), e.g. a PostgreSQL 15 with pgvector 0.7.  Tests of the
embedded server itself are skipped then, as with a container.

``INDEXER_TEST_POSTGRES=container`` runs the session against the official
``pgvector/pgvector`` image instead (``INDEXER_TEST_POSTGRES_IMAGE``, default
``pgvector/pgvector:pg17``), started with testcontainers (``pip install -e
'.[container]'``, and a Docker engine).  Tests of the embedded server itself (those
that take ``data_dir``) are skipped then.  The default path never imports testcontainers.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from indexer.db import migrate, server
from indexer.db.connect import Connection, connect
from indexer.embedding import Embedder
from indexer.exceptions import first_line
from indexer.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TMP = ROOT / ".tmp"
TEMPLATE = "indexer_test_template"


def with_database(dsn: str, database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


SERVER_MODES = ("embedded", "container", "url")
DEFAULT_IMAGE = "pgvector/pgvector:pg17"


def server_mode() -> str:
    """INDEXER_TEST_POSTGRES: ``embedded`` (the default) or ``container``."""
    return os.environ.get("INDEXER_TEST_POSTGRES") or "embedded"


def pytest_configure(config: pytest.Config) -> None:
    mode = server_mode()
    if mode not in SERVER_MODES:
        raise pytest.UsageError(
            f"INDEXER_TEST_POSTGRES={mode!r}: use 'embedded' (the default), 'container' or 'url'"
        )
    if mode == "url" and not os.environ.get("INDEXER_TEST_SERVER_URL"):
        raise pytest.UsageError("INDEXER_TEST_POSTGRES=url needs INDEXER_TEST_SERVER_URL")
    if mode == "container":
        _check_container_support()


def _check_container_support() -> None:
    """One line, before any test runs, when the container option cannot work here."""
    try:
        from testcontainers.core.docker_client import DockerClient
        from testcontainers.postgres import PostgresContainer  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(
            "INDEXER_TEST_POSTGRES=container needs testcontainers: "
            f"pip install -e '.[container]' ({first_line(exc)})"
        ) from None
    try:
        DockerClient().client.ping()
    except Exception as exc:
        raise pytest.UsageError(
            f"INDEXER_TEST_POSTGRES=container needs a running Docker engine: {first_line(exc)}"
        ) from None


@contextlib.contextmanager
def _container_server(image: str) -> Iterator[str]:
    """A PostgreSQL with pgvector in a throwaway container; its DSN."""
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(
        image, username="indexer", password="indexer", dbname="indexer", driver=None
    )
    try:
        with warnings.catch_warnings():
            # The library's own deprecations are not this suite's to fail on.
            warnings.simplefilter("ignore", DeprecationWarning)
            container.start()
    except Exception as exc:
        pytest.exit(f"cannot start the {image} container: {first_line(exc)}", returncode=1)
    try:
        yield str(container.get_connection_url())
    finally:
        container.stop()


def _test_data_dir() -> Path:
    path = Path(os.environ.get("INDEXER_TEST_DATA_DIR", TMP / "test-pgdata"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # The server runs as its own system user when we are root: it must be able to
    # reach the directory.
    path.parent.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The embedded server's data directory; for tests of the embedded server itself."""
    if server_mode() != "embedded":
        pytest.skip(f"tests the embedded server (INDEXER_TEST_POSTGRES={server_mode()})")
    return _test_data_dir()


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
def server_dsn() -> Iterator[str]:
    """The session's server: the embedded one, or a container (INDEXER_TEST_POSTGRES)."""
    if server_mode() == "container":
        image = os.environ.get("INDEXER_TEST_POSTGRES_IMAGE") or DEFAULT_IMAGE
        with _container_server(image) as dsn:
            migrate.upgrade(_create_database(dsn, TEMPLATE), "public")
            yield dsn
        return
    if server_mode() == "url":
        dsn = os.environ["INDEXER_TEST_SERVER_URL"]
        migrate.upgrade(_create_database(dsn, TEMPLATE), "public")
        yield dsn
        _drop_database(dsn, TEMPLATE)
        return
    path = _test_data_dir()
    dsn = server.start(path)
    migrate.upgrade(_create_database(dsn, TEMPLATE), "public")
    yield dsn
    server.stop(path)


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


@pytest.fixture
def pgvector_08(database: str) -> None:
    """Skip a test of pgvector 0.8's settings on a server with an older pgvector (0.7 has
    no iterative scan, and refuses its settings): INDEXER_TEST_POSTGRES=url on 0.7."""
    with psycopg.connect(database) as c:
        row = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    version = tuple(int(p) for p in str(row[0] if row else "0").split("-")[0].split("."))
    if version < (0, 8):
        pytest.skip(f"tests pgvector 0.8's settings; the server has {row[0] if row else None}")
