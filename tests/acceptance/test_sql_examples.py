"""The SQL files under sql/ and every ```sql block of README run as shipped, in psql,
against a migrated database."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from indexer.db.connect import Connection
from indexer.embedding import Embedder

from ..conftest import ROOT
from ..helpers import CORPUS

SQL_FILES = sorted((ROOT / "sql").glob("*.sql"))
_README = (ROOT / "README.md").read_text()
#: (line number, text) of each ```sql block of README.
README_BLOCKS = [
    (_README.count("\n", 0, m.start()) + 1, m.group(1))
    for m in re.finditer(r"^```sql\n(.*?)^```$", _README, re.DOTALL | re.MULTILINE)
]
#: The rows of README's five-minute tour: its SQL refers to them by id.
TOUR_ROWS = [
    ("PostgreSQL is an open source relational database.", '{"topic": "db"}'),
    ("Cats sleep up to sixteen hours a day.", '{"topic": "pets"}'),
    ("The stock market fell sharply today.", '{"topic": "news"}'),
]


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


def test_readme_has_sql_blocks() -> None:
    assert len(README_BLOCKS) >= 2


@pytest.mark.parametrize(
    "block", [b for _, b in README_BLOCKS], ids=[f"README.md:{n}" for n, _ in README_BLOCKS]
)
def test_readme_sql_block_runs_in_psql(
    block: str, database: str, conn: Connection, embedder: Embedder
) -> None:
    vectors = embedder.embed([text for text, _ in TOUR_ROWS])
    for (text, metadata), vector in zip(TOUR_ROWS, vectors, strict=True):
        conn.execute(
            "INSERT INTO chunks (content, metadata, embedding, state) "
            "VALUES (%s, %s, %s, 'embedded')",
            (text, metadata, vector),
        )
    # Pasted into psql as it stands: no placeholder may be left for the reader to fill.
    result = _psql(database, stdin=block)
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr
