"""indexer_status: rows/s over the time the rows took, active = alive and not stopped

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Same columns, same types (CREATE OR REPLACE VIEW refuses anything else), so every
reader of the view keeps working.  Only three columns change meaning:

rows_per_second
    Rows written (batch_completed) in the last minute, divided by the seconds from the
    moment the first of those batches began to now.  A batch began at its ``at`` minus
    its claim_ms + embed_ms + write_ms, or when its daemon started if that is later
    (the timings are measured by the daemon, the start by the server).  Dividing by a
    fixed 60 made a daemon that started 5 s ago look twelve times slower than it is.
    0 when nothing was written in the last minute.  With several daemons the one
    window covers them all: a daemon that joins late is averaged over the others'
    window until its first minute has passed, so the rate converges within a minute.

active_workers
    Daemons that have not written worker_stopped and are alive as far as the table
    can tell: they wrote an event in the last 5 minutes, or they hold a claimed row
    whose lease has not run out.  A busy daemon writes an event per batch, and a
    long model call keeps renewing its leases, so neither drops out.  An idle daemon
    writes nothing and a killed one (SIGKILL, lost machine) never writes
    worker_stopped: the table cannot tell them apart, so both count for 5 minutes
    after their last event (a killed one also while its leases last).  5 minutes is
    INDEXER_DB_DOWN_TIMEOUT's default, the longest a daemon that cannot write stays
    up; an idle daemon missed after that has nothing claimable to work on, and it
    counts again with its next batch.  A daemon id runs once, so worker_stopped is its
    last event: "has a worker_stopped" is "its latest event is worker_stopped".

eta
    backlog / rows_per_second while some daemon is active and the rate is above 0;
    NULL otherwise (rows written by a daemon that has stopped drain nothing).

Cost: one count over chunks as before, the last minute's batches (events_at_idx /
events_kind_at_idx), one short index probe per batch for its daemon's start, the
claimed rows (chunks_queue_idx) and the worker_stopped events.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
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
"""

# The view exactly as 0001 created it.
DOWNGRADE = r"""
CREATE OR REPLACE VIEW indexer_status AS
WITH counts AS (
    SELECT count(*) FILTER (WHERE state = 'pending')  AS pending,
           count(*) FILTER (WHERE state = 'claimed')  AS in_flight,
           count(*) FILTER (WHERE state = 'embedded') AS embedded,
           count(*) FILTER (WHERE state = 'failed')   AS failed,
           min(updated_at) FILTER (WHERE state IN ('pending', 'claimed')) AS oldest_pending_at
    FROM chunks
), recent AS (
    SELECT coalesce(sum(row_count) FILTER (WHERE kind = 'batch_completed'), 0) AS rows_last_minute,
           count(DISTINCT worker_id) AS active_workers
    FROM events
    WHERE at > now() - interval '1 minute'
)
SELECT counts.pending,
       counts.in_flight,
       counts.embedded,
       counts.failed,
       counts.pending + counts.in_flight AS backlog,
       round(recent.rows_last_minute / 60.0, 2) AS rows_per_second,
       CASE WHEN recent.rows_last_minute > 0
            THEN make_interval(secs => round((counts.pending + counts.in_flight)
                                             * 60.0 / recent.rows_last_minute))
       END AS eta,
       now() - counts.oldest_pending_at AS oldest_pending_age,
       recent.active_workers
FROM counts, recent;

COMMENT ON VIEW indexer_status IS
    'Backlog (pending + in flight), embedded, failed, rows/s over the last minute and ETA.';
"""


def _run(script: str) -> None:
    op.get_bind().connection.driver_connection.execute(script)  # type: ignore[union-attr]


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
