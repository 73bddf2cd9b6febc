-- Watching the indexer from SQL.  Run with: psql "$(indexer dsn)" -f sql/status.sql

-- One row: pending, in flight, embedded, failed, backlog, rows/s of the last minute's
-- batches, ETA while a daemon is active, age of the oldest waiting row, and the daemons
-- alive and not stopped (the rules are in migration 0003).
SELECT * FROM indexer_status;

-- Rows parked after repeated failures, with the reason.
SELECT id, attempts, last_error, updated_at FROM chunks WHERE state = 'failed' ORDER BY id;

-- Throughput and model time per minute over the last hour.
SELECT date_trunc('minute', at) AS minute,
       count(*) AS batches,
       sum(row_count) AS rows,
       sum(token_count) AS tokens,
       round(avg(embed_ms)::numeric, 1) AS avg_embed_ms,
       round(avg(write_ms)::numeric, 2) AS avg_write_ms
FROM events
WHERE kind = 'batch_completed' AND at > now() - interval '1 hour'
GROUP BY 1 ORDER BY 1;

-- Daemons: when each started and stopped, and on which host / pid.
SELECT worker_id, kind, at, detail->>'host' AS host, detail->>'pid' AS pid
FROM events WHERE kind IN ('worker_started', 'worker_stopped')
ORDER BY at DESC LIMIT 20;

-- Vectors discarded because their row changed or was deleted while being embedded.
SELECT sum((detail->>'stale')::int) AS stale_vectors FROM events WHERE kind = 'batch_completed';
