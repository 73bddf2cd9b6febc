"""The vector cache: text embedded once is never embedded again

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

vector_cache
    One vector per (model, hash).  ``model`` is the embedder's cache key: its name,
    variant, max tokens and a digest of its ONNX graph and tokenizer, so a vector is
    reused only where the same model would read the same input.  ``hash`` is the
    sha256 of the text the model reads: the first INDEXER_MAX_CHARS characters of the
    row's content, as UTF-8 (the daemon's claim computes it, in SQL, from exactly what
    it fetches).  The cache outlives the rows that filled it, so a delete and re-insert
    of the same text, or boilerplate repeated across rows, costs no model call.
    ``used_at`` is refreshed (at most hourly) when an entry is reused; the daemon prunes
    entries unused for INDEXER_CACHE_MAX_AGE_DAYS and the least recently used beyond
    INDEXER_CACHE_MAX_ENTRIES, a few thousand rows per statement.

chunks.content_hash
    The hash of the input that produced the row's stored embedding (NULL until it is
    embedded, and again whenever its content changes).  Added without a default, so no
    table rewrite.

events.reused_count
    Rows of a batch whose vector came from the cache; indexer_status gains
    rows_reused_last_hour and cache_hit_rate (columns appended: every reader of the
    view keeps working).
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE chunks ADD COLUMN content_hash bytea;
COMMENT ON COLUMN chunks.content_hash IS
    'sha256 of the text the model read for the stored embedding (the first '
    'INDEXER_MAX_CHARS characters, UTF-8); NULL while not embedded';

ALTER TABLE events ADD COLUMN reused_count integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN events.reused_count IS
    'Rows of the batch whose vector came from the vector cache (no model call)';

CREATE TABLE vector_cache (
    model      text NOT NULL,
    hash       bytea NOT NULL,
    embedding  vector(384) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, hash)
);
COMMENT ON TABLE vector_cache IS
    'Vectors by (model cache key, sha256 of the model input), reused for equal text; '
    'pruned by the daemon (INDEXER_CACHE_MAX_AGE_DAYS, INDEXER_CACHE_MAX_ENTRIES)';
-- Pruning takes the least recently used first.
CREATE INDEX vector_cache_used_at_idx ON vector_cache (used_at);

CREATE OR REPLACE FUNCTION chunks_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.content_version := 1;
        NEW.attempts := 0;
        NEW.last_error := NULL;
        NEW.retry_at := NULL;
        NEW.claimed_by := NULL;
        NEW.lease_expires_at := NULL;
        IF NEW.embedding IS NULL THEN
            NEW.state := 'pending';
            NEW.embedded_at := NULL;
            NEW.embedding_model := NULL;
            NEW.content_hash := NULL;
        ELSE
            NEW.state := 'embedded';
            NEW.embedded_at := coalesce(NEW.embedded_at, now());
        END IF;
    ELSIF NEW.content IS DISTINCT FROM OLD.content THEN
        NEW.content_version := OLD.content_version + 1;
        NEW.embedding := NULL;
        NEW.embedding_model := NULL;
        NEW.embedded_at := NULL;
        NEW.content_hash := NULL;
        NEW.state := 'pending';
        NEW.attempts := 0;
        NEW.last_error := NULL;
        NEW.retry_at := NULL;
        NEW.claimed_by := NULL;
        NEW.lease_expires_at := NULL;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE VIEW indexer_status AS
WITH counts AS (
    SELECT count(*) FILTER (WHERE state = 'pending')  AS pending,
           count(*) FILTER (WHERE state = 'claimed')  AS in_flight,
           count(*) FILTER (WHERE state = 'embedded') AS embedded,
           count(*) FILTER (WHERE state = 'failed')   AS failed,
           min(updated_at) FILTER (WHERE state IN ('pending', 'claimed')) AS oldest_pending_at
    FROM chunks
), recent_batches AS (
    SELECT b.row_count, greatest(work.began, daemon.started_at) AS began
    FROM events b
    CROSS JOIN LATERAL (
        SELECT b.at - make_interval(secs => (coalesce(b.claim_ms, 0) + coalesce(b.embed_ms, 0)
                                             + coalesce(b.write_ms, 0)) / 1000.0) AS began
    ) work
    -- Only a start inside the batch's own timings can move its beginning.
    LEFT JOIN LATERAL (
        SELECT max(s.at) AS started_at
        FROM events s
        WHERE s.kind = 'worker_started' AND s.worker_id = b.worker_id
          AND s.at > work.began AND s.at <= b.at
    ) daemon ON true
    WHERE b.kind = 'batch_completed' AND b.at > now() - interval '1 minute'
), recent AS (
    SELECT coalesce(sum(row_count), 0) AS rows_last_minute,
           extract(epoch FROM now() - min(began)) AS seconds
    FROM recent_batches
), rate AS (
    SELECT rows_last_minute,
           CASE WHEN rows_last_minute > 0 AND seconds > 0
                THEN rows_last_minute / seconds
           END AS per_second
    FROM recent
), seen AS (
    SELECT worker_id FROM events WHERE at > now() - interval '5 minutes'
    UNION
    SELECT claimed_by FROM chunks
    WHERE state = 'claimed' AND lease_expires_at > now() AND claimed_by IS NOT NULL
), reuse AS (
    SELECT coalesce(sum(row_count), 0) AS rows_last_hour,
           coalesce(sum(reused_count), 0) AS reused_last_hour
    FROM events
    WHERE kind = 'batch_completed' AND at > now() - interval '1 hour'
), alive AS (
    SELECT count(*) AS active_workers
    FROM seen
    WHERE NOT EXISTS (SELECT 1 FROM events s
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
       END AS cache_hit_rate
FROM counts, rate, alive, reuse;

COMMENT ON VIEW indexer_status IS
    'Backlog (pending + in flight), embedded, failed, rows/s over the time the last '
    'minute''s batches took, ETA while a daemon is active, the daemons alive, and the '
    'share of the last hour''s rows whose vector came from the vector cache.';
"""

DOWNGRADE = r"""
DROP VIEW indexer_status;
CREATE VIEW indexer_status AS
WITH counts AS (
    SELECT count(*) FILTER (WHERE state = 'pending')  AS pending,
           count(*) FILTER (WHERE state = 'claimed')  AS in_flight,
           count(*) FILTER (WHERE state = 'embedded') AS embedded,
           count(*) FILTER (WHERE state = 'failed')   AS failed,
           min(updated_at) FILTER (WHERE state IN ('pending', 'claimed')) AS oldest_pending_at
    FROM chunks
), recent_batches AS (
    SELECT b.row_count, greatest(work.began, daemon.started_at) AS began
    FROM events b
    CROSS JOIN LATERAL (
        SELECT b.at - make_interval(secs => (coalesce(b.claim_ms, 0) + coalesce(b.embed_ms, 0)
                                             + coalesce(b.write_ms, 0)) / 1000.0) AS began
    ) work
    -- Only a start inside the batch's own timings can move its beginning.
    LEFT JOIN LATERAL (
        SELECT max(s.at) AS started_at
        FROM events s
        WHERE s.kind = 'worker_started' AND s.worker_id = b.worker_id
          AND s.at > work.began AND s.at <= b.at
    ) daemon ON true
    WHERE b.kind = 'batch_completed' AND b.at > now() - interval '1 minute'
), recent AS (
    SELECT coalesce(sum(row_count), 0) AS rows_last_minute,
           extract(epoch FROM now() - min(began)) AS seconds
    FROM recent_batches
), rate AS (
    SELECT rows_last_minute,
           CASE WHEN rows_last_minute > 0 AND seconds > 0
                THEN rows_last_minute / seconds
           END AS per_second
    FROM recent
), seen AS (
    SELECT worker_id FROM events WHERE at > now() - interval '5 minutes'
    UNION
    SELECT claimed_by FROM chunks
    WHERE state = 'claimed' AND lease_expires_at > now() AND claimed_by IS NOT NULL
), alive AS (
    SELECT count(*) AS active_workers
    FROM seen
    WHERE NOT EXISTS (SELECT 1 FROM events s
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
       alive.active_workers
FROM counts, rate, alive;

COMMENT ON VIEW indexer_status IS
    'Backlog (pending + in flight), embedded, failed, rows/s over the time the last '
    'minute''s batches took, ETA while a daemon is active, and the daemons alive.';

CREATE OR REPLACE FUNCTION chunks_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.content_version := 1;
        NEW.attempts := 0;
        NEW.last_error := NULL;
        NEW.retry_at := NULL;
        NEW.claimed_by := NULL;
        NEW.lease_expires_at := NULL;
        IF NEW.embedding IS NULL THEN
            NEW.state := 'pending';
            NEW.embedded_at := NULL;
            NEW.embedding_model := NULL;
        ELSE
            NEW.state := 'embedded';
            NEW.embedded_at := coalesce(NEW.embedded_at, now());
        END IF;
    ELSIF NEW.content IS DISTINCT FROM OLD.content THEN
        NEW.content_version := OLD.content_version + 1;
        NEW.embedding := NULL;
        NEW.embedding_model := NULL;
        NEW.embedded_at := NULL;
        NEW.state := 'pending';
        NEW.attempts := 0;
        NEW.last_error := NULL;
        NEW.retry_at := NULL;
        NEW.claimed_by := NULL;
        NEW.lease_expires_at := NULL;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

DROP TABLE vector_cache;
ALTER TABLE events DROP COLUMN reused_count;
ALTER TABLE chunks DROP COLUMN content_hash;
"""


def _run(script: str) -> None:
    op.get_bind().connection.driver_connection.execute(script)  # type: ignore[union-attr]


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
