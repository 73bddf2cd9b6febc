"""The SQL files under sql/ run as shipped, in psql, against a migrated database."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from indexer.db.connect import Connection
from indexer.embedding import Embedder

from ..conftest import ROOT
from ..helpers import CORPUS

SQL_FILES = sorted((ROOT / "sql").glob("*.sql"))


@pytest.mark.parametrize("path", SQL_FILES, ids=[p.name for p in SQL_FILES])
def test_sql_example_runs_in_psql(
    path: Path, database: str, conn: Connection, embedder: Embedder
) -> None:
    psql = shutil.which("psql")
    assert psql is not None, "psql (the PostgreSQL client) is needed to run sql/ examples"
    vectors = embedder.embed(list(CORPUS.values()))
    for i, (text, vector) in enumerate(zip(CORPUS.values(), vectors, strict=True)):
        conn.execute(
            "INSERT INTO chunks (content, metadata, embedding, state) "
            "VALUES (%s, %s, %s, 'embedded')",
            (text, '{"topic": "db"}' if i == 0 else "{}", vector),
        )
    result = subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr
