"""The examples of docs/how-to/sqlalchemy.md run as written, against a real daemon's work.

The page's Python blocks run in order, in one namespace, with its placeholder URL
replaced by the test database's and a worker embedding in a thread.
Then the plan of the ORM query they define is checked: the HNSW index serves it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session

from indexer.embedding import Embedder
from indexer.models import EF_SEARCH, Chunk, search_settings
from indexer.settings import Settings
from indexer.store import Store
from indexer.store.store import EF_SEARCH as STORE_EF_SEARCH
from indexer.worker import Worker

from ..conftest import ROOT
from ..doc_examples import read_page
from .sqla import engine_for, sqlalchemy_url

README_URL = "postgresql+psycopg://app:secret@db.example.com/app"
INDEX = "chunks_embedding_idx"


PAGE = ROOT / "docs" / "how-to" / "sqlalchemy.md"


def readme_blocks() -> list[str]:
    """The page's Python blocks, in order (every one: none is marked not run)."""
    blocks = read_page(PAGE).blocks
    assert all(b.tag == "python" and b.not_run is None for b in blocks)
    return [b.text for b in blocks]


@contextlib.contextmanager
def worker_thread(settings: Settings, embedder: Embedder) -> Iterator[None]:
    """A worker embedding in the background, as `indexer run` would."""
    with Store(settings.database_url or "", settings.schema) as store:
        worker = Worker(settings, store, embedder)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            worker.stop()
            thread.join(60)
            assert not thread.is_alive()


@pytest.fixture
def model_home(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The page's Embedder() uses the default cache (under XDG_CACHE_HOME): point it at
    # the tests' converted model instead of converting it again.
    (tmp_path / "indexer").mkdir()
    (tmp_path / "indexer" / "models").symlink_to(model_cache.resolve())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


def run_blocks(blocks: list[str], url: str, namespace: dict[str, Any]) -> None:
    for block in blocks:
        exec(compile(block.replace(README_URL, url), str(PAGE), "exec"), namespace)


def plan(engine: Engine, statement: Any) -> str:
    """EXPLAIN of ``statement`` as the driver receives it (bind processors applied),
    with sequential scans discouraged: a three-row table is cheaper to scan."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, sql: str, params: Any, *args: Any) -> None:
        sent.append((sql, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with Session(engine) as session:
            session.execute(statement).all()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    (sql, params) = sent[-1]
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        rows = conn.exec_driver_sql("EXPLAIN " + sql, params).all()
    return "\n".join(row[0] for row in rows)


def test_readme_blocks_are_there() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 4
    assert sum(README_URL in b for b in blocks) == 2  # the sync and the async engine


@contextlib.contextmanager
def synchronous_examples(
    database: str, settings: Settings, embedder: Embedder, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Run the synchronous blocks (insert, wait, search); their namespace and output."""
    namespace: dict[str, Any] = {"__name__": "readme"}
    try:
        with worker_thread(settings, embedder):
            run_blocks(
                [b for b in readme_blocks() if "asyncio" not in b], url_of(database), namespace
            )
        printed = capsys.readouterr().out.splitlines()
        # Two rows about databases, the closer first; the pets row is filtered out.
        assert len(printed) == 2, printed
        assert "PostgreSQL" in printed[0] and "SQLite" in printed[1]
        yield namespace, printed
    finally:
        if "engine" in namespace:
            namespace["engine"].dispose()


def url_of(database: str) -> str:
    return sqlalchemy_url(database).render_as_string(hide_password=False)


@pytest.mark.usefixtures("model_home")
def test_readme_sqlalchemy_example(
    database: str, settings: Settings, embedder: Embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    with synchronous_examples(database, settings, embedder, capsys) as (namespace, _):
        engine: Engine = namespace["engine"]
        with Session(engine) as session:
            states = session.scalars(select(Chunk.state).where(Chunk.id.in_(namespace["ids"])))
            assert set(states) == {"embedded"}

        q = namespace["q"]
        assert INDEX in plan(engine, namespace["nearest"](q, k=2, where={"topic": "db"}))
        assert INDEX in plan(engine, namespace["nearest"](q, k=2))
        # The check can fail: an order the cosine index cannot serve is a full sort.
        l2 = select(Chunk).order_by(Chunk.embedding.l2_distance(q)).limit(2)
        assert INDEX not in plan(engine, l2)


@pytest.mark.usefixtures("model_home")
def test_readme_async_example(
    database: str, settings: Settings, embedder: Embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("greenlet") is None:
        pytest.skip("SQLAlchemy's asyncio needs greenlet: pip install -e '.[dev]'")
    with synchronous_examples(database, settings, embedder, capsys) as (namespace, printed):
        run_blocks([b for b in readme_blocks() if "asyncio" in b], url_of(database), namespace)
        assert capsys.readouterr().out.splitlines() == printed


@pytest.mark.usefixtures("pgvector_08")
def test_search_settings_are_the_indexers(database: str) -> None:
    assert EF_SEARCH == STORE_EF_SEARCH
    with engine_for(database) as engine, engine.connect() as conn:
        conn.execute(text("SELECT '[1]'::vector"))  # pgvector's library, hence its settings
        conn.commit()
        conn.execute(search_settings())
        assert conn.scalar(text("SHOW hnsw.ef_search")) == str(EF_SEARCH)
        # The embedded server has pgvector 0.8: the guard lets the iterative scan on.
        assert conn.scalar(text("SHOW hnsw.iterative_scan")) == "strict_order"
        conn.commit()
        # Only for the transaction.
        assert conn.scalar(text("SHOW hnsw.iterative_scan")) == "off"


def test_vectors_round_trip(database: str, embedder: Embedder) -> None:
    vector = embedder.embed(["hello"])[0]
    with engine_for(database) as engine, Session(engine) as session:
        chunk = Chunk(content="hello", embedding=vector)
        session.add(chunk)
        session.commit()
        back = session.scalars(select(Chunk.embedding).where(Chunk.id == chunk.id)).one()
    # A list of floats (pgvector-python 0.5; numpy arrays before): either way the vector.
    assert np.allclose(np.asarray(back, dtype=np.float32), vector, atol=1e-6)
