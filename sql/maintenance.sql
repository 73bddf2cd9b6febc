-- Maintenance statements.  Run the ones you need from psql.

-- Re-queue rows parked as failed (the same as `indexer retry --failed`).
UPDATE chunks SET state = 'pending', attempts = 0, retry_at = NULL, last_error = NULL
WHERE state = 'failed';

-- Re-embed everything (e.g. after changing the model); vectors are replaced as the
-- daemon gets to them.
-- UPDATE chunks SET state = 'pending', attempts = 0 WHERE state = 'embedded';

-- Delete old events by hand (the daemon prunes hourly past INDEXER_EVENTS_RETENTION_DAYS;
-- `indexer events prune` does it now).
-- DELETE FROM events WHERE at < now() - interval '7 days';
