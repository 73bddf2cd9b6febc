"""The SQL files under sql/ run as shipped, in psql, against a migrated database.

The SQL blocks of README and of the docs run in psql in the order of their page, with
the page's other examples (tests/acceptance/doc_runner.py): here, only that none is left
out without a test that runs it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from indexer.db.connect import Connection
from indexer.embedding import Embedder

from ..conftest import ROOT
from ..doc_examples import all_pages
from ..helpers import CORPUS

SQL_FILES = sorted((ROOT / "sql").glob("*.sql"))


def _psql(database: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql")
    assert psql is not None, "psql (the PostgreSQL client) is needed to run the SQL examples"
    return subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("path", SQL_FILES, ids=[p.name for p in SQL_FILES])
def test_sql_example_runs_in_psql(
    path: Path, database: str, conn: Connection, embedder: Embedder
) -> None:
    vectors = embedder.embed(list(CORPUS.values()))
    for i, (text, vector) in enumerate(zip(CORPUS.values(), vectors, strict=True)):
        conn.execute(
            "INSERT INTO chunks (content, metadata, embedding, state) "
            "VALUES (%s, %s, %s, 'embedded')",
            (text, '{"topic": "db"}' if i == 0 else "{}", vector),
        )
    result = _psql(database, "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr


def test_every_sql_block_of_readme_and_the_docs_is_run() -> None:
    blocks = [
        block for page in all_pages() for block in page.blocks if block.tag in ("sql", "postgresql")
    ]
    assert len(blocks) >= 10
    for block in blocks:
        if block.not_run is not None:
            # Only where another test runs it: the reason names that test.
            named = re.search(r"tests/\S+\.py", block.not_run)
            assert named is not None and (ROOT / named.group(0)).exists(), block.where
