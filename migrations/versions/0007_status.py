"""Status: rows and passages counted apart; failed documents re-queued by retry_documents

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

indexer_status
    Its columns keep their names, types and order (CREATE OR REPLACE VIEW), and their
    meaning for rows, which they now count alone: ``pending``, ``in_flight``,
    ``embedded``, ``failed``, ``backlog`` and ``oldest_pending_age`` count the rows
    inserted straight into chunks (``document_id IS NULL``), no longer the passages of
    the sources' documents too (4 rows and one long document said "embedded 396");
    ``rows_per_second`` and ``eta`` come from the batches of rows alone.
    ``active_workers`` also counts a daemon that holds documents under a live lease;
    ``rows_reused_last_hour`` and ``cache_hit_rate`` are the vector cache's, over rows
    and passages as before.  New columns, at the end:

    passages
        rows of chunks that are passages of a source's document
    documents, documents_pending, documents_in_flight, documents_indexed, documents_failed
        the sources' documents, all of them and by state
    passages_per_second
        passages written in the last minute, over the time their batches took (as
        ``rows_per_second`` does for rows)

retry_documents(source_name DEFAULT NULL)
    Re-queues the failed documents of every source, or of the one named (an unknown
    name raises ``undefined_object``), with a fresh attempt count, and wakes the
    daemons; returns one row per source, ``(source, requeued)``.  SECURITY DEFINER, so
    that a role ``grant_write`` was run for may re-queue them as it may re-queue rows:
    re-queuing reads no text and shows nothing but the sources' names, which the role
    may read anyway.  ``grant_write`` now grants it too, and the roles that already
    have INSERT on chunks get it here.
"""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# @s: the indexer's schema, @v: pgvector's (quoted identifiers); see migration 0006.
UPGRADE = r"""
CREATE OR REPLACE VIEW @s.indexer_status AS
WITH counts AS (
    SELECT count(*) FILTER (WHERE c.document_id IS NULL AND c.state = 'pending')  AS pending,
           count(*) FILTER (WHERE c.document_id IS NULL AND c.state = 'claimed')  AS in_flight,
           count(*) FILTER (WHERE c.document_id IS NULL AND c.state = 'embedded') AS embedded,
           count(*) FILTER (WHERE c.document_id IS NULL AND c.state = 'failed')   AS failed,
           count(*) FILTER (WHERE c.document_id IS NOT NULL) AS passages,
           min(c.updated_at) FILTER (WHERE c.document_id IS NULL
                                       AND c.state IN ('pending', 'claimed'))
               AS oldest_pending_at
    FROM @s.chunks c
), documents AS (
    SELECT count(*) AS documents,
           count(*) FILTER (WHERE d.state = 'pending') AS pending,
           count(*) FILTER (WHERE d.state = 'claimed') AS in_flight,
           count(*) FILTER (WHERE d.state = 'indexed') AS indexed,
           count(*) FILTER (WHERE d.state = 'failed')  AS failed
    FROM @s.source_documents d
), recent_batches AS (
    -- A batch of documents says which documents it wrote (detail.documents).
    SELECT b.row_count, b.detail ? 'documents' AS of_documents,
           greatest(work.began, daemon.started_at) AS began
    FROM @s.events b
    CROSS JOIN LATERAL (
        SELECT b.at - make_interval(secs => (coalesce(b.claim_ms, 0) + coalesce(b.embed_ms, 0)
                                             + coalesce(b.write_ms, 0)) / 1000.0) AS began
    ) work
    -- Only a start inside the batch's own timings can move its beginning.
    LEFT JOIN LATERAL (
        SELECT max(s.at) AS started_at
        FROM @s.events s
        WHERE s.kind = 'worker_started' AND s.worker_id = b.worker_id
          AND s.at > work.began AND s.at <= b.at
    ) daemon ON true
    WHERE b.kind = 'batch_completed' AND b.at > now() - interval '1 minute'
), recent AS (
    SELECT coalesce(sum(row_count) FILTER (WHERE NOT of_documents), 0) AS rows_last_minute,
           extract(epoch FROM now() - min(began) FILTER (WHERE NOT of_documents)) AS seconds,
           coalesce(sum(row_count) FILTER (WHERE of_documents), 0) AS passages_last_minute,
           extract(epoch FROM now() - min(began) FILTER (WHERE of_documents))
               AS passage_seconds
    FROM recent_batches
), rate AS (
    SELECT rows_last_minute,
           CASE WHEN rows_last_minute > 0 AND seconds > 0
                THEN rows_last_minute / seconds
           END AS per_second,
           passages_last_minute,
           CASE WHEN passages_last_minute > 0 AND passage_seconds > 0
                THEN passages_last_minute / passage_seconds
           END AS passages_per_second
    FROM recent
), seen AS (
    SELECT worker_id FROM @s.events WHERE at > now() - interval '5 minutes'
    UNION
    SELECT claimed_by FROM @s.chunks
    WHERE state = 'claimed' AND lease_expires_at > now() AND claimed_by IS NOT NULL
    UNION
    SELECT claimed_by FROM @s.source_documents
    WHERE state = 'claimed' AND lease_expires_at > now() AND claimed_by IS NOT NULL
), reuse AS (
    SELECT coalesce(sum(row_count), 0) AS rows_last_hour,
           coalesce(sum(reused_count), 0) AS reused_last_hour
    FROM @s.events
    WHERE kind = 'batch_completed' AND at > now() - interval '1 hour'
), alive AS (
    SELECT count(*) AS active_workers
    FROM seen
    WHERE NOT EXISTS (SELECT 1 FROM @s.events s
                      WHERE s.kind = 'worker_stopped' AND s.worker_id = seen.worker_id)
)
SELECT counts.pending,
       counts.in_flight,
       counts.embedded,
       counts.failed,
       counts.pending + counts.in_flight AS backlog,
       CASE WHEN rate.rows_last_minute = 0 THEN 0 ELSE round(rate.per_second, 2)
       END AS rows_per_second,
       CASE WHEN alive.active_workers > 0 AND rate.per_second > 0
            THEN make_interval(secs => round((counts.pending + counts.in_flight)
                                             / rate.per_second))
       END AS eta,
       now() - counts.oldest_pending_at AS oldest_pending_age,
       alive.active_workers,
       reuse.reused_last_hour AS rows_reused_last_hour,
       CASE WHEN reuse.rows_last_hour > 0
            THEN round(reuse.reused_last_hour::numeric / reuse.rows_last_hour, 4)
       END AS cache_hit_rate,
       counts.passages,
       documents.documents,
       documents.pending AS documents_pending,
       documents.in_flight AS documents_in_flight,
       documents.indexed AS documents_indexed,
       documents.failed AS documents_failed,
       CASE WHEN rate.passages_last_minute = 0 THEN 0
            ELSE round(rate.passages_per_second, 2)
       END AS passages_per_second
FROM counts, documents, rate, alive, reuse;

COMMENT ON VIEW @s.indexer_status IS
    'Rows inserted into chunks: backlog (pending + in flight), embedded, failed, rows/s '
    'over the time the last minute''s batches of rows took, ETA while a daemon is active; '
    'the daemons alive; the share of the last hour''s vectors that came from the vector '
    'cache; and apart from the rows, the passages of the sources'' documents and those '
    'documents by state, and passages/s.';

CREATE FUNCTION @s.retry_documents(source_name text DEFAULT NULL)
RETURNS TABLE (source text, requeued bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    sid integer;
BEGIN
    IF retry_documents.source_name IS NOT NULL THEN
        SELECT s.id INTO sid FROM @s.sources s WHERE s.name = retry_documents.source_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no source named %', retry_documents.source_name
                USING ERRCODE = 'undefined_object';
        END IF;
    END IF;
    RETURN QUERY
    WITH retried AS (
        UPDATE @s.source_documents d
        SET state = 'pending', attempts = 0, last_error = NULL, retry_at = NULL,
            claimed_by = NULL, lease_expires_at = NULL, queued_at = now()
        WHERE d.state = 'failed' AND (sid IS NULL OR d.source_id = sid)
        RETURNING d.source_id
    )
    SELECT s.name, count(*)
    FROM retried r
    JOIN @s.sources s ON s.id = r.source_id
    GROUP BY s.name
    ORDER BY s.name;
    IF FOUND THEN
        PERFORM pg_notify('indexer_chunks', @schema_literal);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION @s.retry_documents(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @s.grant_write(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @s.grant_search(role);
    EXECUTE format('GRANT INSERT, UPDATE, DELETE ON %1$s.chunks, %1$s.documents TO %2$s',
                   @schema_ident_literal, role);
    EXECUTE format('GRANT SELECT ON %1$s.documents TO %2$s', @schema_ident_literal, role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$s.retry_documents(text) TO %2$s',
                   @schema_ident_literal, role);
END
$$;

-- Roles that may already write rows may re-queue documents too.
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee::regrole
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        WHERE c.oid = '@s.chunks'::regclass AND a.privilege_type = 'INSERT'
          AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %1$s.retry_documents(text) TO %2$s',
                       @schema_ident_literal, grantee);
    END LOOP;
END
$$;
"""

DOWNGRADE = r"""
DROP FUNCTION @s.retry_documents(text);
DROP VIEW @s.indexer_status;
"""


def _migration(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"indexer_migration_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _previous() -> str:
    """indexer_status as migration 0004 created it, and grant_write as 0006 did: their
    scripts are their one definition."""
    view = re.search(
        r"CREATE OR REPLACE VIEW indexer_status AS\n.*?\nCOMMENT ON VIEW indexer_status IS\n"
        r".*?;\n",
        _migration("0004_vector_cache").UPGRADE,
        re.DOTALL,
    )
    assert view is not None
    grant = re.search(
        r"CREATE FUNCTION @s\.grant_write\(.*?\n\$\$;\n",
        _migration("0006_privileges").UPGRADE,
        re.DOTALL,
    )
    assert grant is not None
    # 0004 names its objects unqualified: the migration's search_path starts with the
    # indexer's schema.
    return view.group(0).replace("CREATE OR REPLACE VIEW", "CREATE VIEW", 1) + grant.group(
        0
    ).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _run(script: str) -> None:
    # 0006's placeholder substitution (schema and pgvector's schema, quoted).
    _migration("0006_privileges")._run(script)


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE + _previous())
