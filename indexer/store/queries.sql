-- Every statement the indexer runs against chunks and events, by name.
-- indexer/store/store.py is the only module that executes them.  Objects are unqualified:
-- each connection puts the configured schema first on its search_path.

-- claim --
-- Claim up to %(limit)s rows that need work: pending rows whose retry time has come,
-- and claimed rows whose lease expired (their daemon died).  SKIP LOCKED lets several
-- daemons claim at once without waiting on each other; the partial index
-- chunks_queue_idx keeps this cheap however many rows are already embedded.  Only the
-- first %(max_chars)s characters are read, so a huge row cannot blow up memory.
WITH candidates AS (
    SELECT id
    FROM chunks
    WHERE state IN ('pending', 'claimed')
      AND ((state = 'pending' AND (retry_at IS NULL OR retry_at <= now()))
           OR (state = 'claimed' AND lease_expires_at < now()))
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE chunks AS c
SET state = 'claimed',
    claimed_by = %(worker_id)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
FROM candidates
WHERE c.id = candidates.id
RETURNING c.id, c.content_version, left(c.content, %(max_chars)s) AS content, c.attempts;

-- complete_batch --
-- Write a batch's vectors and its batch_completed event in one round trip.  The write
-- is guarded: a row whose content changed (content_version), that was deleted, or whose
-- lease passed to another daemon (claimed_by) is not written; its vector is discarded.
-- write_ms is the server-side time of this statement.  The vectors are sent in
-- pgvector's binary format (a b placeholder): cheaper to build and to parse than text.
WITH input AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(versions)s::integer[], %(embeddings)b::vector[])
         AS t(id, content_version, embedding)
), written AS (
    UPDATE chunks AS c
    SET embedding = input.embedding,
        embedding_model = %(model)s,
        embedded_at = now(),
        state = 'embedded',
        attempts = 0,
        last_error = NULL,
        retry_at = NULL,
        claimed_by = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM input
    WHERE c.id = input.id
      AND c.content_version = input.content_version
      AND c.claimed_by = %(worker_id)s
      AND c.state = 'claimed'
    RETURNING c.id
)
INSERT INTO events (kind, worker_id, batch_id, row_count, token_count,
                    claim_ms, embed_ms, write_ms, chunk_ids, detail)
SELECT 'batch_completed', %(worker_id)s, %(batch_id)s, count(*), %(token_count)s,
       %(claim_ms)s, %(embed_ms)s,
       extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000,
       coalesce(array_agg(written.id ORDER BY written.id), '{}'),
       jsonb_build_object('stale', cardinality(%(ids)s::bigint[]) - count(*),
                          'model', %(model)s::text)
FROM written
RETURNING row_count, chunk_ids;

-- fail_rows --
-- Rows that could not be embedded: back to pending with an exponential backoff, or
-- parked as failed after %(max_attempts)s attempts, with the error kept in last_error;
-- one batch_failed event names them.  Guarded like complete_batch.
WITH input AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(versions)s::integer[], %(errors)s::text[])
         AS t(id, content_version, error)
), failed AS (
    UPDATE chunks AS c
    SET attempts = c.attempts + 1,
        last_error = input.error,
        state = CASE WHEN c.attempts + 1 >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
        retry_at = CASE WHEN c.attempts + 1 >= %(max_attempts)s THEN NULL
                        ELSE now() + make_interval(
                            secs => %(retry_base_seconds)s::float8 * power(2, c.attempts))
                   END,
        claimed_by = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM input
    WHERE c.id = input.id
      AND c.content_version = input.content_version
      AND c.claimed_by = %(worker_id)s
      AND c.state = 'claimed'
    RETURNING c.id, c.state, input.error
)
INSERT INTO events (kind, worker_id, batch_id, row_count, token_count, embed_ms,
                    chunk_ids, error, detail)
SELECT 'batch_failed', %(worker_id)s, %(batch_id)s, count(*), 0, %(embed_ms)s,
       coalesce(array_agg(failed.id ORDER BY failed.id), '{}'),
       min(failed.error),
       jsonb_build_object(
           'parked', coalesce(array_agg(failed.id) FILTER (WHERE failed.state = 'failed'), '{}'),
           'errors', coalesce(jsonb_object_agg(failed.id, failed.error), '{}'::jsonb))
FROM failed
RETURNING row_count, chunk_ids;

-- extend_lease --
-- Heartbeat for the batch in flight: a slow model call never loses its rows to another
-- daemon, and once the daemon dies its leases run out within lease_seconds.
UPDATE chunks
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker_id)s AND state = 'claimed';

-- release --
-- Give claimed rows back (the daemon is stopping, or could not finish them).
UPDATE chunks
SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker_id)s AND state = 'claimed';

-- insert_event --
INSERT INTO events (kind, worker_id, batch_id, row_count, token_count, chunk_ids, error, detail)
VALUES (%(kind)s, %(worker_id)s, %(batch_id)s, %(row_count)s, %(token_count)s,
        %(chunk_ids)s::bigint[], %(error)s, %(detail)s);

-- insert_chunks --
INSERT INTO chunks (content, metadata)
SELECT * FROM unnest(%(contents)s::text[], %(metadata)s::jsonb[])
RETURNING id;

-- status --
SELECT * FROM indexer_status;

-- queue_status --
-- What /health and /metrics read on every scrape: only unfinished and failed rows, via
-- the partial indexes, so the cost follows the backlog, not the table size.
SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'claimed') AS in_flight,
       count(*) AS backlog,
       now() - min(updated_at) AS oldest_pending_age,
       (SELECT count(*) FROM chunks WHERE state = 'failed') AS failed
FROM chunks
WHERE state IN ('pending', 'claimed');

-- failed_rows --
SELECT id, attempts, last_error, updated_at
FROM chunks
WHERE state = 'failed'
ORDER BY id
LIMIT %(limit)s;

-- retry_failed --
-- Re-queue parked rows (all of them, or the given ids) with a fresh attempt count.
UPDATE chunks
SET state = 'pending', attempts = 0, retry_at = NULL, last_error = NULL, updated_at = now()
WHERE state = 'failed' AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
RETURNING id;

-- search --
-- Nearest rows to a query vector: search_chunks() (migration 0002) is the one
-- definition of search, the same a user runs in SQL.  Cosine distance on the HNSW
-- index; the metadata filter (jsonb containment, '{}' matches all) is applied during
-- the index scan, and pgvector's iterative scan (0.8+) keeps going until k rows pass.
SELECT id, score, left(content, %(max_chars)s) AS content, metadata
FROM search_chunks(%(query)s, %(k)s, %(filter)s::jsonb);

-- search_width --
-- hnsw.ef_search bounds how many rows one HNSW scan can return; %(local)s: for the
-- current transaction only.
SELECT set_config('hnsw.ef_search', %(ef_search)s, %(local)s);

-- search_iterative --
SELECT set_config('hnsw.iterative_scan', 'strict_order', false);

-- prune_events --
WITH pruned AS (
    DELETE FROM events WHERE at < now() - make_interval(secs => %(older_than_seconds)s)
    RETURNING 1
)
SELECT count(*) AS pruned FROM pruned;
