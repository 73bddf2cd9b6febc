"""The guarded statements that set pgvector-0.8-only settings, run for real.

The embedded server has pgvector 0.8.5 only, so 0.7 is stood in for where the guard
reads it: ``pg_extension`` in the statement is replaced by a one-row table holding the
version under test.  The statement itself, the server and the setting are real.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from ..pgvector_settings import Use
from ..unit.test_pgvector_settings import shipped_uses
from .sqla import engine_for

GUARDED = [u for u in shipped_uses() if u.checks_version]
# The settings are set for real: on pgvector 0.8 or newer (an older one is stood in for).
pytestmark = pytest.mark.usefixtures("pgvector_08")
# A literal, not a parameter: a DO block takes none.  Only the versions below go in.
VERSION_TABLE = "(VALUES ('vector', '{}')) AS pg_extension(extname, extversion)"


#: How to run the functions whose body holds a guarded setting (the function sets it
#: when called, for its transaction).
#: (With a query of the active model's dimension: migration 0009 checks it.)
CALLS = {
    "search_documents": "SELECT count(*) FROM search_documents("
    "array_fill(0.1::real, ARRAY[384])::vector, 1)",
    "search_chunks": "SELECT count(*) FROM search_chunks("
    "array_fill(0.1::real, ARRAY[384])::vector, 1)",
}
_FUNCTION = re.compile(r"CREATE (?:OR REPLACE )?FUNCTION (?:public\.)?(\w+)\(")


def run(database: str, use: Use, version: str | None) -> str:
    """Run ``use`` (as if pgvector ``version`` were installed; None: as it is); the
    iterative scan setting then, in the same transaction.  A function is replaced by
    ``use``'s definition and called."""
    # Migrations from 0006 on name the indexer's schema and pgvector's with
    # placeholders; the test database has both in public.
    statement = use.statement.replace("@s.", "public.").replace("@v.", "public.")
    params = {"ef_search": "100"} if ":ef_search" in statement else {}
    if version is not None:
        assert "FROM pg_extension" in statement
        assert re.fullmatch(r"[0-9a-z.-]+", version)
        statement = statement.replace("FROM pg_extension", f"FROM {VERSION_TABLE.format(version)}")
    with engine_for(database) as engine, engine.connect() as conn:
        conn.execute(text("SELECT '[1]'::vector"))  # loads pgvector, hence its settings
        function = _FUNCTION.match(statement)
        if function is None:
            conn.execute(text(statement), params)
        else:
            # The revision's definition alone: another revision's (another signature)
            # would make the call ambiguous.
            drops = conn.execute(
                text(
                    "SELECT format('DROP FUNCTION %s', p.oid::regprocedure) FROM pg_proc p"
                    " WHERE p.proname = :name AND p.pronamespace = 'public'::regnamespace"
                ),
                {"name": function.group(1)},
            ).scalars()
            for drop in list(drops):
                conn.exec_driver_sql(drop)
            replace = re.sub(
                r"^CREATE (OR REPLACE )?FUNCTION", "CREATE OR REPLACE FUNCTION", statement
            )
            conn.exec_driver_sql(replace.replace("%", "%%"))
            conn.execute(text(CALLS[function.group(1)]))
        return str(conn.scalar(text("SHOW hnsw.iterative_scan")))


def test_there_are_guarded_statements() -> None:
    assert len(GUARDED) >= 2


@pytest.mark.parametrize("use", GUARDED, ids=[u.where for u in GUARDED])
def test_on_the_installed_pgvector_the_setting_is_made(database: str, use: Use) -> None:
    assert run(database, use, None) == "strict_order"


@pytest.mark.parametrize("use", GUARDED, ids=[u.where for u in GUARDED])
@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.7.4", "off"),
        ("0.7.0-dev", "off"),
        ("0.8.0", "strict_order"),
        ("0.10.1", "strict_order"),  # compared as numbers, not as text
    ],
)
def test_the_guard_follows_the_version(
    database: str, use: Use, version: str, expected: str
) -> None:
    assert run(database, use, version) == expected
