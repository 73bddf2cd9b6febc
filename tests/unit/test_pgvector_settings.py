"""The SQL this project ships runs on pgvector 0.7: settings of 0.8 only where guarded.

What "guarded" means is in tests/pgvector_settings.py.  The embedded server has pgvector
0.8, so this is a static check; tests/integration/test_pgvector_guards.py runs the
guarded statements, on the real version and on a 0.7 one put in its place.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from indexer.store.queries import QUERIES

from ..conftest import ROOT
from ..pgvector_settings import Use, python_strings, statements, unguarded_runs, uses

SQL_FILES = sorted((ROOT / "sql").glob("*.sql"))
MIGRATIONS = sorted((ROOT / "migrations" / "versions").glob("[0-9]*.py"))
PYTHON_SQL = [*MIGRATIONS, ROOT / "indexer" / "models.py"]


def shipped_uses() -> list[Use]:
    found: list[Use] = []
    for path in SQL_FILES:
        found += uses(path.name, path.read_text(encoding="utf-8"))
    for path in PYTHON_SQL:
        for text in python_strings(path):
            found += uses(path.name, text)
    return found


def test_sql_files_migrations_and_models_guard_every_08_setting() -> None:
    unguarded = [u for u in shipped_uses() if not u.checks_version]
    assert unguarded == []


def test_the_guarded_statements_are_found() -> None:
    # sql/search.sql and indexer.models.search_settings() set the iterative scan: the
    # scan must see both (so the check above has something to check).
    assert {u.where for u in shipped_uses()} >= {"search.sql", "models.py"}


def test_named_queries_with_08_settings_run_only_after_a_version_check() -> None:
    named = {name for name, query in QUERIES.items() if uses(name, query)}
    assert named == {"search_iterative"}
    for path in sorted((ROOT / "indexer").rglob("*.py")):
        assert unguarded_runs(path.read_text(encoding="utf-8"), named) == [], path


# -- the checker itself can fail ---------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SET hnsw.iterative_scan = strict_order;",
        "SELECT set_config('hnsw.max_scan_tuples', '20000', false);",
        "SET LOCAL ivfflat.max_probes = 10",
        "SELECT 1; SET hnsw.scan_mem_multiplier = 2; SELECT extversion FROM pg_extension;",
    ],
)
def test_an_unguarded_setting_is_reported(sql: str) -> None:
    found = uses("x.sql", sql)
    assert len(found) == 1 and not found[0].checks_version


@pytest.mark.parametrize(
    "sql",
    [
        "-- SET hnsw.iterative_scan = strict_order\nSELECT 1;",
        "/* hnsw.iterative_scan */ SELECT 1;",
        "SET hnsw.ef_search = 100;",  # exists in 0.7
    ],
)
def test_comments_and_07_settings_are_not_uses(sql: str) -> None:
    assert uses("x.sql", sql) == []


def test_a_do_block_checking_extversion_is_guarded() -> None:
    sql = textwrap.dedent("""\
        DO $$
        BEGIN
            IF (SELECT extversion FROM pg_extension WHERE extname = 'vector') >= '0.8' THEN
                SET hnsw.iterative_scan = strict_order;  -- a ; inside the body
            END IF;
        END
        $$;
        SELECT ';' AS not_a_split;
        """)
    found = uses("x.sql", sql)
    assert len(found) == 1 and found[0].checks_version
    assert len(statements(sql)) == 2


def test_a_query_run_outside_a_version_check_is_reported() -> None:
    source = textwrap.dedent("""\
        def configure(conn, pgvector):
            if pgvector >= (0, 8):
                conn.execute(QUERIES["search_iterative"])
            if pgvector >= (0, 7):
                conn.execute(QUERIES["search_iterative"])
            conn.execute(QUERIES["search_iterative"])
        """)
    assert unguarded_runs(source, {"search_iterative"}) == [5, 6]


def test_docstrings_are_not_sql(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""SET hnsw.iterative_scan = on"""\nSQL = "SET hnsw.iterative_scan = on"\n')
    assert python_strings(module) == ["SET hnsw.iterative_scan = on"]
