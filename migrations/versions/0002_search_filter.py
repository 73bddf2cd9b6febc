"""search_chunks takes a metadata filter: the one definition of search

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The daemon's own search (CLI, Python API, HTTP) selects from this function, so search
is written once, here, and what a user runs in SQL is what the indexer runs.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP FUNCTION IF EXISTS search_chunks(vector, integer);

-- Nearest rows to a query vector (cosine), among those whose metadata contains
-- ``filter`` (jsonb containment; '{}' matches every row).  The HNSW index serves the
-- ORDER BY; with a filter, pgvector's iterative scan (0.8+, hnsw.iterative_scan) keeps
-- scanning until k rows pass it.  Pass the vector as a value (a bound parameter), not
-- a subquery, so that PostgreSQL inlines the function and the index can serve it.
CREATE FUNCTION search_chunks(query vector, k integer DEFAULT 10, filter jsonb DEFAULT '{}')
RETURNS TABLE (id bigint, score double precision, content text, metadata jsonb)
LANGUAGE sql STABLE AS $$
    SELECT c.id, 1 - (c.embedding <=> query), c.content, c.metadata
    FROM chunks c
    WHERE c.embedding IS NOT NULL AND c.metadata @> filter
    ORDER BY c.embedding <=> query
    LIMIT k
$$;
"""

DOWNGRADE = r"""
DROP FUNCTION IF EXISTS search_chunks(vector, integer, jsonb);

CREATE FUNCTION search_chunks(query vector, k integer DEFAULT 10)
RETURNS TABLE (id bigint, score double precision, content text, metadata jsonb)
LANGUAGE sql STABLE AS $$
    SELECT c.id, 1 - (c.embedding <=> query), c.content, c.metadata
    FROM chunks c
    WHERE c.embedding IS NOT NULL
    ORDER BY c.embedding <=> query
    LIMIT k
$$;
"""


def _run(script: str) -> None:
    op.get_bind().connection.driver_connection.execute(script)  # type: ignore[union-attr]


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
