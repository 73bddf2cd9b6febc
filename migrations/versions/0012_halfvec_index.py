"""halfvec models' HNSW index packs eight graph elements a page: m 13, ef_construction 100

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

model_index_options(halfvec)
    The options a model's HNSW index is built with, by the type of its vectors:
    ``vector`` m 16, ef_construction 64 (pgvector's defaults, as before); ``halfvec``
    m 13, ef_construction 100.  pgvector keeps each element of the graph (its vector,
    room for 10 heap TIDs) beside its neighbour list (2 m TIDs at layer 0) on one 8 kB
    page: a ``halfvec(384)`` element with 32 neighbours takes about 1,056 bytes, 7 a
    page, so its index was 4/7 (57%) of the ``vector`` one's; with 26 it takes about
    1,016, 8 a page, and the index is about 53%.  Fewer neighbours cost recall; more
    candidates while building (ef_construction 100) win it back, at about the build time
    of the ``vector`` index (docs/benchmarks/performance.md, "halfvec vs vector").

add_model
    Builds the index it makes at once with those options; a daemon's deferred build
    (``indexer.store.indexes``) reads them too.  Indexes already built keep theirs.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# @s: the indexer's schema, @v: pgvector's (quoted identifiers); see migration 0006.
UPGRADE = r"""
-- The HNSW options of a model's index, by the type of its vectors (see the migration).
CREATE FUNCTION @s.model_index_options(halfvec boolean, OUT m integer,
                                       OUT ef_construction integer)
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN model_index_options.halfvec THEN 13 ELSE 16 END,
           CASE WHEN model_index_options.halfvec THEN 100 ELSE 64 END
$$;
REVOKE ALL ON FUNCTION @s.model_index_options(boolean) FROM PUBLIC;
"""

# add_model of 0011: the index it makes at once, and what 0012 makes of it.
_DECLARE_0011 = "    deferred boolean;\n"
_DECLARE = "    deferred boolean;\n    options record;\n"
_INDEX_0011 = r"""        EXECUTE format('CREATE INDEX %I ON %s USING hnsw (embedding @v.%s) '
                       'WITH (m = 16, ef_construction = 64)',
                       @s.model_index_name(new_id), tbl,
                       CASE WHEN add_model.halfvec THEN 'halfvec_cosine_ops'
                            ELSE 'vector_cosine_ops' END);
"""
_INDEX = r"""        options := @s.model_index_options(add_model.halfvec);
        EXECUTE format('CREATE INDEX %I ON %s USING hnsw (embedding @v.%s) '
                       'WITH (m = %s, ef_construction = %s)',
                       @s.model_index_name(new_id), tbl,
                       CASE WHEN add_model.halfvec THEN 'halfvec_cosine_ops'
                            ELSE 'vector_cosine_ops' END,
                       options.m, options.ef_construction);
"""

DOWNGRADE = r"""
DROP FUNCTION @s.model_index_options(boolean);
"""


def _migration(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"indexer_migration_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _add_model_of_0011() -> str:
    """0011's add_model, as ``CREATE OR REPLACE`` (its signature is unchanged)."""
    text = str(_migration("0011_model_index").UPGRADE)
    start = text.index("CREATE FUNCTION @s.add_model(")
    end = text.index("\n$$;\n", start) + len("\n$$;\n")
    return text[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _add_model() -> str:
    text = _add_model_of_0011()
    assert text.count(_DECLARE_0011) == 1 and text.count(_INDEX_0011) == 1
    return text.replace(_DECLARE_0011, _DECLARE, 1).replace(_INDEX_0011, _INDEX, 1)


def _run(script: str) -> None:
    # 0006's placeholder substitution (schema and pgvector's schema, quoted).
    _migration("0006_privileges")._run(script)


def upgrade() -> None:
    _run(UPGRADE + _add_model())


def downgrade() -> None:
    # 0011's add_model first: it must not call the function dropped after it.
    _run(_add_model_of_0011() + DOWNGRADE)
