-- Every statement the indexer runs against chunks and events, by name.
-- indexer/store/store.py is the only module that executes them.  Objects are unqualified:
-- each connection puts the configured schema first on its search_path.

-- claim --
-- Claim up to %(limit)s rows that need work: pending rows whose retry time has come,
-- and claimed rows whose lease expired (their daemon died).  SKIP LOCKED lets several
-- daemons claim at once without waiting on each other; the partial index
-- chunks_queue_idx keeps this cheap however many rows are already embedded.  Only the
-- first %(max_chars)s characters are read, so a huge row cannot blow up memory.
--
-- Each row comes back with the sha256 of exactly that text (the model's input) and,
-- when the vector cache holds a vector for it under %(cache_key)s (NULL: the cache is
-- off), that vector: one primary-key probe per row, in the same statement.  A reused
-- entry's used_at is refreshed at most hourly, skipping entries another statement has
-- locked (a concurrent claim or the pruner), so a claim never waits on the cache.
WITH candidates AS (
    SELECT id
    FROM chunks
    WHERE state IN ('pending', 'claimed')
      AND ((state = 'pending' AND (retry_at IS NULL OR retry_at <= now()))
           OR (state = 'claimed' AND lease_expires_at < now()))
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE chunks AS c
    SET state = 'claimed',
        claimed_by = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    FROM candidates
    WHERE c.id = candidates.id
    RETURNING c.id, c.content_version, left(c.content, %(max_chars)s) AS content, c.attempts
), hashed AS (
    SELECT claimed.*, sha256(convert_to(claimed.content, 'UTF8')) AS hash
    FROM claimed
), hits AS (
    SELECT hashed.id, v.hash, v.embedding, v.used_at
    FROM hashed
    JOIN vector_cache AS v ON v.model = %(cache_key)s::text AND v.hash = hashed.hash
), touched AS (
    UPDATE vector_cache AS v
    SET used_at = now()
    FROM (SELECT model, hash
          FROM vector_cache
          WHERE model = %(cache_key)s::text
            AND hash IN (SELECT hash FROM hits WHERE used_at < now() - interval '1 hour')
          FOR UPDATE SKIP LOCKED) AS due
    WHERE v.model = due.model AND v.hash = due.hash
)
SELECT hashed.id, hashed.content_version, hashed.content, hashed.attempts, hashed.hash,
       hits.embedding AS cached
FROM hashed
LEFT JOIN hits ON hits.id = hashed.id;

-- complete_batch --
-- Write a batch's vectors and its batch_completed event in one round trip.  The write
-- is guarded: a row whose content changed (content_version), that was deleted, or whose
-- lease passed to another daemon (claimed_by) is not written; its vector is discarded.
-- A vector taken from the cache goes through the same guard as a fresh one.
-- Fresh vectors (not %(reused)s) enter the vector cache under %(cache_key)s (NULL:
-- the cache is off), in hash order so that two daemons inserting the same texts
-- cannot deadlock; a vector is right for its hash whether or not its row was written.
-- write_ms is the server-side time of this statement.  The vectors are sent in
-- pgvector's binary format (a b placeholder): cheaper to build and to parse than text.
WITH input AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(versions)s::integer[], %(embeddings)b::vector[],
                %(hashes)s::bytea[], %(reused)s::boolean[])
         AS t(id, content_version, embedding, hash, reused)
), written AS (
    UPDATE chunks AS c
    SET embedding = CASE WHEN %(in_column)s THEN input.embedding ELSE c.embedding END,
        embedding_model = CASE WHEN %(in_column)s THEN %(model)s ELSE c.embedding_model END,
        embedded_at = now(),
        content_hash = input.hash,
        -- Written by a model that is no longer the active one (a switch came while the
        -- batch was in flight): its vectors are kept, and the row is queued again for
        -- the active model, so that an activated model never lacks a row's vector.
        state = CASE WHEN %(model_id)s::integer IS NULL OR EXISTS (
                         SELECT 1 FROM models AS m WHERE m.id = %(model_id)s AND m.active)
                     THEN 'embedded' ELSE 'pending' END,
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
    RETURNING c.id, c.state, input.reused
), queued AS (
    -- Every other model embeds the new text too (migration 0009); a claim of an older
    -- text is given up (its write will find another version).
    INSERT INTO model_pending (model_id, chunk_id)
    SELECT m.id, written.id FROM written CROSS JOIN models AS m
    WHERE m.id IS DISTINCT FROM %(model_id)s::integer AND written.state = 'embedded'
    ON CONFLICT (model_id, chunk_id) DO UPDATE
    SET fresh = true, claimed_by = NULL, lease_expires_at = NULL, attempts = 0,
        last_error = NULL, retry_at = NULL, failed = false
), cached AS (
    INSERT INTO vector_cache (model, hash, embedding)
    SELECT DISTINCT ON (input.hash) %(cache_key)s::text, input.hash, input.embedding
    FROM input
    WHERE %(cache_key)s::text IS NOT NULL AND NOT input.reused AND input.hash IS NOT NULL
    ORDER BY input.hash
    ON CONFLICT DO NOTHING
)
INSERT INTO events (kind, worker_id, batch_id, row_count, reused_count, token_count,
                    claim_ms, embed_ms, write_ms, chunk_ids, detail)
SELECT 'batch_completed', %(worker_id)s, %(batch_id)s, count(*),
       count(*) FILTER (WHERE written.reused), %(token_count)s,
       %(claim_ms)s, %(embed_ms)s,
       extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000,
       coalesce(array_agg(written.id ORDER BY written.id), '{}'),
       jsonb_build_object('stale', cardinality(%(ids)s::bigint[]) - count(*),
                          'model', %(model)s::text) || %(detail)s::jsonb
FROM written
RETURNING row_count, reused_count, chunk_ids;

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
-- daemon, and once the daemon dies its leases run out within lease_seconds.  Returns
-- the rows still held: one missing was taken over (its lease ran out) or changed.
UPDATE chunks
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker_id)s AND state = 'claimed'
RETURNING id;

-- release --
-- Give claimed rows back (the daemon is stopping, or could not finish them).
UPDATE chunks
SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker_id)s AND state = 'claimed';

-- apply_source_changes --
-- Apply what the sources' triggers appended (migration 0008), oldest first: keys queued
-- again or deleted.  0 when another daemon is applying them right now.
SELECT apply_source_changes(%(batch)s::integer) AS applied;

-- claim_documents --
-- Lease up to %(limit)s documents of the sources that need work (pending and due, or
-- claimed under an expired lease), like claim does for rows.
WITH candidates AS (
    SELECT id
    FROM source_documents
    WHERE state IN ('pending', 'claimed')
      AND ((state = 'pending' AND (retry_at IS NULL OR retry_at <= now()))
           OR (state = 'claimed' AND lease_expires_at < now()))
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE source_documents AS d
SET state = 'claimed',
    claimed_by = %(worker_id)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
FROM candidates
WHERE d.id = candidates.id
RETURNING d.id, d.source_id, d.doc_key, d.version, d.attempts;

-- source_texts --
-- The current text and metadata of documents of one source (migration 0005).
SELECT doc_key, content, metadata
FROM source_texts(%(source)s::integer, %(keys)s::text[], %(max_chars)s::integer);

-- cached_vectors --
-- The vector cache's entries for these hashes under %(cache_key)s; a reused entry's
-- used_at is refreshed at most hourly, skipping locked entries (as claim does).
WITH hits AS (
    SELECT hash, embedding, used_at
    FROM vector_cache
    WHERE model = %(cache_key)s::text AND hash = ANY(%(hashes)s::bytea[])
), touched AS (
    UPDATE vector_cache AS v
    SET used_at = now()
    FROM (SELECT model, hash
          FROM vector_cache
          WHERE model = %(cache_key)s::text
            AND hash IN (SELECT hash FROM hits WHERE used_at < now() - interval '1 hour')
          FOR UPDATE SKIP LOCKED) AS due
    WHERE v.model = due.model AND v.hash = due.hash
)
SELECT hash, embedding FROM hits;

-- replace_documents --
-- Replace the chunk sets of documents in one statement: a reader sees each document's
-- old chunks or its new ones, never a mix.  Guarded like complete_batch: a document
-- whose version changed (its row was updated), that was deleted, or whose lease passed
-- to another daemon is left alone, and its chunks are discarded.  The document rows
-- are locked first, skipping those an application's transaction is changing right now
-- (its trigger holds the row: the document is about to be queued again), so the daemon
-- never waits on the application and an application's change waits at most for this
-- one statement.  Every document statement of the daemon skips locked documents the
-- same way, for the same reason.  Fresh vectors (not
-- reused) enter the vector cache whether or not their document was written: a vector
-- is right for its hash, and the next version of the document will want most of them.
WITH docs AS (
    SELECT *
    FROM unnest(%(doc_ids)s::bigint[], %(versions)s::integer[], %(chunk_counts)s::integer[],
                %(truncated)s::boolean[])
         AS t(id, version, chunk_count, truncated)
), held AS (
    SELECT d.id, d.source_id, d.doc_key
    FROM source_documents AS d
    JOIN docs ON docs.id = d.id AND docs.version = d.version
    WHERE d.claimed_by = %(worker_id)s AND d.state = 'claimed'
    FOR UPDATE OF d SKIP LOCKED
), input AS (
    SELECT *
    FROM unnest(%(chunk_docs)s::bigint[], %(positions)s::integer[], %(starts)s::integer[],
                %(ends)s::integer[], %(contents)s::text[], %(metadata)s::jsonb[],
                %(embeddings)b::vector[], %(hashes)s::bytea[], %(reused)s::boolean[])
         AS t(document_id, position, char_start, char_end, content, metadata, embedding, hash,
              reused)
), removed AS (
    DELETE FROM chunks AS c
    USING held
    WHERE c.document_id = held.id
    RETURNING c.id
), added AS (
    INSERT INTO chunks (content, metadata, embedding, embedding_model, embedded_at,
                        content_hash, document_id, source_id, doc_key, position, char_start,
                        char_end)
    SELECT input.content, input.metadata,
           CASE WHEN %(in_column)s THEN input.embedding END,
           CASE WHEN %(in_column)s THEN %(model)s END, now(), input.hash,
           held.id, held.source_id, held.doc_key, input.position, input.char_start,
           input.char_end
    FROM input
    JOIN held ON held.id = input.document_id
    ORDER BY input.document_id, input.position
    RETURNING id, document_id, position
), queued AS (
    INSERT INTO model_pending (model_id, chunk_id)
    SELECT m.id, added.id FROM added CROSS JOIN models AS m
    WHERE m.id IS DISTINCT FROM %(model_id)s::integer
    ON CONFLICT DO NOTHING
), cached AS (
    INSERT INTO vector_cache (model, hash, embedding)
    SELECT DISTINCT ON (input.hash) %(cache_key)s::text, input.hash, input.embedding
    FROM input
    WHERE %(cache_key)s::text IS NOT NULL AND NOT input.reused
    ORDER BY input.hash
    ON CONFLICT DO NOTHING
), done AS (
    UPDATE source_documents AS d
    SET state = 'indexed',
        chunk_count = docs.chunk_count,
        truncated = docs.truncated,
        indexed_at = now(),
        attempts = 0,
        last_error = NULL,
        retry_at = NULL,
        claimed_by = NULL,
        lease_expires_at = NULL
    FROM docs
    JOIN held ON held.id = docs.id
    WHERE d.id = docs.id
    RETURNING d.id
)
INSERT INTO events (kind, worker_id, batch_id, row_count, reused_count, token_count,
                    claim_ms, embed_ms, write_ms, chunk_ids, detail)
SELECT 'batch_completed', %(worker_id)s, %(batch_id)s,
       (SELECT count(*) FROM added),
       (SELECT count(*) FROM input JOIN held ON held.id = input.document_id
        WHERE input.reused),
       %(token_count)s, %(claim_ms)s, %(embed_ms)s,
       extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000,
       coalesce((SELECT array_agg(id ORDER BY id) FROM added), '{}'),
       jsonb_build_object(
           'documents', coalesce((SELECT jsonb_agg(id ORDER BY id) FROM done), '[]'::jsonb),
           'stale_documents', cardinality(%(doc_ids)s::bigint[]) - (SELECT count(*) FROM done),
           'chunks_removed', (SELECT count(*) FROM removed),
           'model', %(model)s::text) || %(detail)s::jsonb
RETURNING chunk_ids, reused_count, detail -> 'documents' AS documents,
          (SELECT coalesce(jsonb_agg(jsonb_build_array(id, document_id, position)), '[]')
           FROM added) AS added;

-- cache_vectors --
-- Keep vectors computed for documents that could not be written (a stop request, a
-- document edited meanwhile), so the next attempt reuses them.
INSERT INTO vector_cache (model, hash, embedding)
SELECT %(cache_key)s::text, t.hash, t.embedding
FROM unnest(%(hashes)s::bytea[], %(embeddings)b::vector[]) AS t(hash, embedding)
ORDER BY t.hash
ON CONFLICT DO NOTHING;

-- forget_documents --
-- Documents whose row is gone from their table although they are still queued: the
-- back-fill read the key just before the application deleted the row.  Guarded like
-- replace_documents, so a key inserted again meanwhile (a new version) stays queued.
DELETE FROM source_documents AS d
USING (SELECT s.id
       FROM source_documents AS s
       JOIN unnest(%(ids)s::bigint[], %(versions)s::integer[]) AS t(id, version)
         ON t.id = s.id AND t.version = s.version
       WHERE s.claimed_by = %(worker_id)s AND s.state = 'claimed'
       FOR UPDATE OF s SKIP LOCKED) AS held
WHERE d.id = held.id
RETURNING d.id;

-- fail_documents --
-- Documents that could not be indexed (their table could not be read, or the model
-- failed on one of their chunks): back to pending with a backoff, or parked as failed
-- after %(max_attempts)s attempts, the error kept in last_error; one batch_failed event
-- names them (row_count: documents).  Guarded like replace_documents.
WITH input AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(versions)s::integer[], %(errors)s::text[])
         AS t(id, version, error)
), locked AS (
    SELECT d.id
    FROM source_documents AS d
    JOIN input ON input.id = d.id AND input.version = d.version
    WHERE d.claimed_by = %(worker_id)s AND d.state = 'claimed'
    FOR UPDATE OF d SKIP LOCKED
), failed AS (
    UPDATE source_documents AS d
    SET attempts = d.attempts + 1,
        last_error = input.error,
        state = CASE WHEN d.attempts + 1 >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
        retry_at = CASE WHEN d.attempts + 1 >= %(max_attempts)s THEN NULL
                        ELSE now() + make_interval(
                            secs => %(retry_base_seconds)s::float8 * power(2, d.attempts))
                   END,
        claimed_by = NULL,
        lease_expires_at = NULL
    FROM input
    JOIN locked ON locked.id = input.id
    WHERE d.id = input.id
    RETURNING d.id, d.state, input.error
)
INSERT INTO events (kind, worker_id, batch_id, row_count, token_count, embed_ms, error, detail)
SELECT 'batch_failed', %(worker_id)s, %(batch_id)s, count(*), 0, %(embed_ms)s,
       min(failed.error),
       jsonb_build_object(
           'documents', coalesce(jsonb_agg(failed.id ORDER BY failed.id), '[]'::jsonb),
           'parked', coalesce(jsonb_agg(failed.id) FILTER (WHERE failed.state = 'failed'),
                              '[]'::jsonb),
           'errors', coalesce(jsonb_object_agg(failed.id, failed.error), '{}'::jsonb))
FROM failed
RETURNING detail -> 'documents' AS documents;

-- extend_document_lease --
-- The lease keeper's heartbeat for documents; returns those still held (one that an
-- application is changing right now is not: it is being queued again).
UPDATE source_documents AS d
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
FROM (SELECT id FROM source_documents
      WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker_id)s AND state = 'claimed'
      FOR UPDATE SKIP LOCKED) AS held
WHERE d.id = held.id
RETURNING d.id;

-- release_documents --
UPDATE source_documents AS d
SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL
FROM (SELECT id FROM source_documents
      WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker_id)s AND state = 'claimed'
      FOR UPDATE SKIP LOCKED) AS held
WHERE d.id = held.id;

-- defer_documents --
-- Documents whose table is locked by another transaction right now: back to pending,
-- due again in %(seconds)s seconds, without counting an attempt (nothing failed).
UPDATE source_documents AS d
SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL,
    retry_at = now() + make_interval(secs => %(seconds)s)
FROM (SELECT id FROM source_documents
      WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker_id)s AND state = 'claimed'
      FOR UPDATE SKIP LOCKED) AS held
WHERE d.id = held.id;

-- backfills_due --
SELECT id, name FROM sources WHERE backfill_done_at IS NULL ORDER BY id;

-- backfill_source --
-- One key range of a source's existing rows (migration 0005); NULL: done, or another
-- daemon holds it.
SELECT backfill_source(%(source)s::integer, %(batch)s::integer) AS queued;

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
-- What /health and /metrics read on every scrape: only unfinished and failed rows and
-- documents, via the partial indexes, so the cost follows the backlog, not the table
-- size; and the role searches run as (what it may read: see chunks' row-level
-- security).  Rows are those inserted into chunks (document_id NULL), not passages.
-- The documents' figures are NULL for a role that may not read source_documents.
SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'claimed') AS in_flight,
       count(*) AS backlog,
       now() - min(updated_at) AS oldest_pending_age,
       (SELECT count(*) FROM chunks WHERE state = 'failed' AND document_id IS NULL) AS failed,
       current_user AS search_role,
       CASE WHEN has_table_privilege('source_documents', 'SELECT') THEN
           (SELECT count(*) FROM source_documents WHERE state IN ('pending', 'claimed'))
       END AS documents_backlog,
       CASE WHEN has_table_privilege('source_documents', 'SELECT') THEN
           (SELECT count(*) FROM source_documents WHERE state = 'failed')
       END AS documents_failed
FROM chunks
WHERE state IN ('pending', 'claimed') AND document_id IS NULL;

-- failed_rows --
SELECT id, attempts, last_error, updated_at
FROM chunks
WHERE state = 'failed' AND document_id IS NULL
ORDER BY id
LIMIT %(limit)s;

-- retry_failed --
-- Re-queue parked rows (all of them, or the given ids) with a fresh attempt count.
UPDATE chunks
SET state = 'pending', attempts = 0, retry_at = NULL, last_error = NULL, updated_at = now()
WHERE state = 'failed' AND document_id IS NULL
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
RETURNING id;

-- failed_documents --
-- Documents parked as failed, with their source's name and the error (the partial
-- index source_documents_failed_idx).
SELECT s.name AS source, d.doc_key AS key, d.attempts, d.last_error, d.queued_at
FROM source_documents d
JOIN sources s ON s.id = d.source_id
WHERE d.state = 'failed'
ORDER BY s.name, d.id
LIMIT %(limit)s;

-- retry_documents --
-- Re-queue the failed documents of every source, or of the one named (migration 0007).
SELECT source, requeued FROM retry_documents(%(source)s);

-- retry_document_keys --
-- Re-queue the failed documents of one source whose keys are given (the web console's
-- retry of one document), and wake the daemons.  The daemon's role only: a role with
-- retry_documents() re-queues a whole source's, and learns no key.
WITH retried AS (
    UPDATE source_documents d
    SET state = 'pending', attempts = 0, last_error = NULL, retry_at = NULL,
        claimed_by = NULL, lease_expires_at = NULL, queued_at = now()
    FROM sources s
    WHERE s.name = %(source)s::text AND d.source_id = s.id AND d.state = 'failed'
      AND d.doc_key = ANY(%(keys)s::text[])
    RETURNING d.id
)
SELECT count(*) AS requeued,
       CASE WHEN count(*) > 0 THEN pg_notify('indexer_chunks', current_schema()) END AS woken
FROM retried;

-- source_name --
SELECT name FROM sources WHERE id = %(source)s;

-- indexer_owner --
-- The role that owns the indexer's tables (the one that ran `indexer migrate`), whether
-- it is a superuser (no role should be made a member of that one), and whether this
-- session's role has its rights.
SELECT pg_get_userbyid(c.relowner) AS owner,
       (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = c.relowner) AS owner_is_superuser,
       pg_has_role(current_user, c.relowner, 'USAGE') AS owns,
       current_user AS role
FROM pg_class c
WHERE c.oid = to_regclass('chunks');

-- search_coverage --
-- Why a search found nothing: whether any row is embedded, or waiting; whether this
-- role can see any passage (of the source named, if one is), as chunks' row-level
-- security lets it; and whether any document (of that source) is indexed, waiting (or
-- a change of its table's rows not applied yet) or failed (NULL for a role that may
-- not read source_documents).
WITH source AS (
    SELECT s.id FROM sources s WHERE s.name = %(source)s::text
)
SELECT EXISTS (SELECT 1 FROM chunks WHERE document_id IS NULL AND state = 'embedded')
           AS rows_embedded,
       EXISTS (SELECT 1 FROM chunks WHERE state IN ('pending', 'claimed')) AS rows_waiting,
       EXISTS (SELECT 1 FROM chunks c
               WHERE c.document_id IS NOT NULL
                 AND (%(source)s::text IS NULL OR c.source_id = (SELECT id FROM source)))
           AS passages,
       CASE WHEN has_table_privilege('source_documents', 'SELECT') THEN
           EXISTS (SELECT 1 FROM source_documents d
                   WHERE d.state = 'indexed' AND coalesce(d.chunk_count, 0) > 0
                     AND (%(source)s::text IS NULL OR d.source_id = (SELECT id FROM source)))
       END AS documents_indexed,
       CASE WHEN has_table_privilege('source_documents', 'SELECT')
                 AND has_table_privilege('source_changes', 'SELECT') THEN
           EXISTS (SELECT 1 FROM source_documents d
                   WHERE d.state IN ('pending', 'claimed')
                     AND (%(source)s::text IS NULL OR d.source_id = (SELECT id FROM source)))
           OR EXISTS (SELECT 1 FROM source_changes g
                      WHERE NOT g.gone
                        AND (%(source)s::text IS NULL OR g.source_id = (SELECT id FROM source)))
       END AS documents_waiting,
       CASE WHEN has_table_privilege('source_documents', 'SELECT') THEN
           EXISTS (SELECT 1 FROM source_documents d
                   WHERE d.state = 'failed'
                     AND (%(source)s::text IS NULL OR d.source_id = (SELECT id FROM source)))
       END AS documents_failed;

-- search --
-- Nearest rows to a query vector: search_chunks() (migration 0002) is the one
-- definition of search, the same a user runs in SQL.  Cosine distance on the HNSW
-- index; the metadata filter (jsonb containment, '{}' matches all) is applied during
-- the index scan, and pgvector's iterative scan (0.8+) keeps going until k rows pass.
SELECT id, score, left(content, %(max_chars)s) AS content, metadata
FROM search_chunks(%(query)s::vector, %(k)s::integer, %(filter)s::jsonb, %(model)s::text);

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


-- prune_cache_age --
-- At most %(batch)s cached vectors not reused for %(max_age_seconds)s, oldest first;
-- entries a claim is refreshing right now are skipped, so neither waits.
WITH victims AS (
    SELECT model, hash
    FROM vector_cache
    WHERE used_at < now() - make_interval(secs => %(max_age_seconds)s)
    ORDER BY used_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM vector_cache AS v
    USING victims
    WHERE v.model = victims.model AND v.hash = victims.hash
    RETURNING 1
)
SELECT count(*) AS pruned FROM deleted;

-- prune_cache_size --
-- At most %(batch)s of the least recently used vectors beyond %(max_entries)s.  Two
-- daemons pruning at once may each take a batch: the cache can end up to one batch
-- under its bound, never over it for long.
WITH excess AS (
    SELECT greatest(0, count(*) - %(max_entries)s) AS n FROM vector_cache
), victims AS (
    SELECT model, hash
    FROM vector_cache
    ORDER BY used_at
    LIMIT least(%(batch)s, (SELECT n FROM excess))
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM vector_cache AS v
    USING victims
    WHERE v.model = victims.model AND v.hash = victims.hash
    RETURNING 1
)
SELECT count(*) AS pruned FROM deleted;

-- cache_stats --
-- The cache's size (entries, and bytes on disk with its indexes) and its use: rows
-- written in the events still kept, and how many of them reused a cached vector.
SELECT (SELECT count(*) FROM vector_cache) AS entries,
       pg_total_relation_size('vector_cache'::regclass) AS bytes,
       (SELECT coalesce(jsonb_object_agg(model, n), '{}'::jsonb)
        FROM (SELECT model, count(*) AS n FROM vector_cache GROUP BY model) m) AS models,
       (SELECT min(used_at) FROM vector_cache) AS least_recently_used,
       coalesce(sum(row_count), 0) AS rows_written,
       coalesce(sum(reused_count), 0) AS rows_reused,
       coalesce(sum(row_count) FILTER (WHERE at > now() - interval '1 hour'), 0)
           AS rows_written_last_hour,
       coalesce(sum(reused_count) FILTER (WHERE at > now() - interval '1 hour'), 0)
           AS rows_reused_last_hour,
       min(at) AS since
FROM events
WHERE kind = 'batch_completed';

-- cache_purge --
-- Delete the cached vectors of the given hashes, of the given texts (as the daemon
-- reads them, cut to %(max_chars)s characters, and whole), and of the given rows'
-- current content_hash, under every model.
WITH targets AS (
    SELECT unnest(%(hashes)s::bytea[]) AS hash
    UNION
    SELECT sha256(convert_to(left(t, %(max_chars)s), 'UTF8')) FROM unnest(%(texts)s::text[]) t
    UNION
    SELECT sha256(convert_to(t, 'UTF8')) FROM unnest(%(texts)s::text[]) t
    UNION
    SELECT content_hash FROM chunks
    WHERE id = ANY(%(ids)s::bigint[]) AND content_hash IS NOT NULL
), deleted AS (
    DELETE FROM vector_cache AS v
    USING targets
    WHERE v.hash = targets.hash
    RETURNING 1
)
SELECT count(*) AS purged FROM deleted;

-- cache_clear --
-- Every cached vector (TRUNCATE: instant at any size; it waits for claims in flight).
TRUNCATE vector_cache;

-- Sources: the front door (CLI, Python API, HTTP).  Everything below calls the SQL
-- functions of migration 0005, so each way in runs what a SQL user runs.

-- add_source --
-- Register a table (add_source() checks it and RAISEs one clear line otherwise), and
-- the planner's estimate of its rows (NULL when the table was never analyzed): what
-- the daemon's back-fill will queue.
SELECT s.name, s.table_schema, s.table_name, s.key_column, s.key_type, s.text_columns,
       s.metadata_columns, s.metadata_json,
       (SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = s.table_schema AND c.relname = s.table_name) AS estimated_rows
FROM add_source(%(table)s::regclass, %(key)s::text, %(text)s::text[], %(metadata)s::text[],
                %(metadata_json)s::text, %(name)s::text, %(lock_wait)s::interval) AS s;

-- detach_source --
-- Drop a source's triggers, in a transaction of its own (DROP TRIGGER locks the
-- application's table until the transaction ends; see remove_source).  NULL, or the
-- line that says which triggers stay and who may drop them.
SELECT detach_source(%(name)s::text, %(lock_wait)s::interval) AS detached;

-- remove_source --
SELECT remove_source(%(name)s::text) AS removed;

-- source_status --
-- The view, and what remote models' servers reported and charged for each source's
-- passages over the last day (each batch's figures split between its sources by the
-- characters of the passages it embedded: detail.provider.sources).
SELECT v.*, c.provider_tokens, c.cost
FROM indexer_source_status AS v
LEFT JOIN (
    SELECT s.name,
           round(sum((e.detail #>> '{provider,prompt_tokens}')::numeric * x.value::numeric))
               ::bigint AS provider_tokens,
           sum((e.detail #>> '{provider,cost}')::float8 * x.value::float8) AS cost
    FROM events AS e
    CROSS JOIN LATERAL jsonb_each_text(e.detail #> '{provider,sources}') AS x
    JOIN sources AS s ON s.id::text = x.key
    WHERE e.kind = 'batch_completed' AND e.at > now() - interval '1 day'
      AND e.detail #> '{provider,sources}' IS NOT NULL
    GROUP BY s.name
) AS c ON c.name = v.source
ORDER BY v.source;

-- source_queue_status --
-- What /metrics reads per source on every scrape.  Pending, in flight and the lag come
-- from the partial index source_documents_queue_idx, failed from
-- source_documents_failed_idx: their cost follows the backlog, not the table.  Indexed
-- is not read from indexer_source_status, which reads every document's heap row and
-- sums its chunk_count: it is the source's documents counted on the (source_id,
-- doc_key) unique index (an index-only scan once vacuum has marked the pages visible)
-- less the queued and failed ones.  That is the one term that grows with the table,
-- and it touches the index alone.
WITH queued AS (
    SELECT source_id,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'claimed') AS in_flight,
           min(queued_at) AS oldest_queued_at
    FROM source_documents
    WHERE state IN ('pending', 'claimed')
    GROUP BY source_id
), failed AS (
    SELECT source_id, count(*) AS failed
    FROM source_documents
    WHERE state = 'failed'
    GROUP BY source_id
)
SELECT s.name AS source,
       coalesce(q.pending, 0) AS pending,
       coalesce(q.in_flight, 0) AS in_flight,
       coalesce(f.failed, 0) AS failed,
       (SELECT count(*) FROM source_documents d WHERE d.source_id = s.id)
           - coalesce(q.pending, 0) - coalesce(q.in_flight, 0) - coalesce(f.failed, 0)
           AS indexed,
       now() - q.oldest_queued_at AS lag
FROM sources s
LEFT JOIN queued q ON q.source_id = s.id
LEFT JOIN failed f ON f.source_id = s.id
ORDER BY s.name;

-- search_documents --
-- The k documents nearest to a query vector: search_documents() (migration 0005) is
-- the one definition, the same a user runs in SQL.
SELECT source, key, score, content, position, char_start, char_end, metadata, passages
FROM search_documents(%(query)s::vector, %(k)s::integer, %(filter)s::jsonb, %(source)s::text,
                      %(passages)s::integer, %(model)s::text);

-- insert_documents --
-- Rows of the built-in documents table (its trigger queues them for the daemon).
INSERT INTO documents (content, metadata)
SELECT * FROM unnest(%(contents)s::text[], %(metadata)s::jsonb[])
RETURNING id;

-- store_model_vectors --
-- A model's vectors, into chunks.embedding or the model's table (migration 0009),
-- for the chunks still at the version they were computed for; returns those written.
SELECT store_model_vectors(%(model_id)s::integer, %(ids)s::bigint[], %(versions)s::integer[],
                           %(embeddings)b::vector[], %(hashes)s::bytea[],
                           %(max_chars)s::integer) AS written;

-- models --
SELECT id, name, kind, dimension, halfvec, storage, record, fingerprint, active, created_at,
       activated_at
FROM models
ORDER BY id;

-- model_status --
SELECT * FROM indexer_model_status ORDER BY model;

-- add_model --
SELECT add_model(%(name)s::text, %(dimension)s::integer, %(record)s::jsonb,
                 %(fingerprint)s::text, %(halfvec)s::boolean, %(lock_wait)s::interval,
                 %(defer_index_at)s::bigint) AS id;

-- adopt_model --
SELECT adopt_model(%(model_id)s::integer, %(name)s::text, %(record)s::jsonb,
                   %(fingerprint)s::text);

-- activate_model --
SELECT activate_model(%(name)s::text, %(force)s::boolean) AS missing;

-- drop_model --
SELECT drop_model(%(name)s::text, %(lock_wait)s::interval);

-- models_to_index --
-- The models whose HNSW index a daemon should build now (migration 0011), with the
-- schema pgvector's operator classes live in.
SELECT t.model_id, t.name, t.halfvec, t.vectors, t.index, t.state,
       (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'vector') AS vector_schema
FROM models_to_index(%(slack)s::bigint) AS t;

-- model_index_state --
SELECT model_index(m.id) AS state FROM models m WHERE m.name = %(name)s;

-- index_lock_holder --
SELECT a.usename AS role, a.pid
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
  AND l.classid = model_index_lock()::oid AND l.objid = %(model_id)s::integer::oid
  AND a.usesysid <> (SELECT c.relowner FROM pg_class c WHERE c.oid = 'models'::regclass)
LIMIT 1;

-- fill_model --
-- Queue the next range of chunks that a model has not embedded (0: none left).
SELECT fill_model(%(model_id)s::integer, %(batch)s::integer) AS spanned;

-- claim_model_work --
-- Lease up to %(limit)s chunks a model has to embed, newest work first, each with the
-- text the model reads, its hash and the model's cached vector (as claim does).  Work
-- whose chunk is gone is dropped on the way.
WITH candidates AS (
    SELECT p.chunk_id
    FROM model_pending AS p
    WHERE p.model_id = %(model_id)s AND NOT p.failed
      AND ((p.claimed_by IS NULL AND (p.retry_at IS NULL OR p.retry_at <= now()))
           OR p.lease_expires_at < now())
    ORDER BY p.fresh DESC, p.chunk_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM model_pending AS p
    USING candidates
    WHERE p.model_id = %(model_id)s AND p.chunk_id = candidates.chunk_id
      AND NOT EXISTS (SELECT 1 FROM chunks AS c WHERE c.id = candidates.chunk_id)
), claimed AS (
    UPDATE model_pending AS p
    SET claimed_by = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    FROM candidates
    WHERE p.model_id = %(model_id)s AND p.chunk_id = candidates.chunk_id
    RETURNING p.chunk_id, p.attempts
), texts AS (
    SELECT c.id, c.content_version, left(c.content, %(max_chars)s) AS content,
           claimed.attempts
    FROM claimed JOIN chunks AS c ON c.id = claimed.chunk_id
), hashed AS (
    SELECT texts.*, sha256(convert_to(texts.content, 'UTF8')) AS hash FROM texts
)
SELECT hashed.id, hashed.content_version, hashed.content, hashed.attempts, hashed.hash,
       v.embedding AS cached
FROM hashed
LEFT JOIN vector_cache AS v ON v.model = %(cache_key)s::text AND v.hash = hashed.hash;

-- finish_model_work --
-- The model's work on these chunks is done (written, or its text changed meanwhile:
-- the new text is queued again when the active model writes it).  Work queued again
-- while this daemon held it (claimed_by reset) stays.
DELETE FROM model_pending
WHERE model_id = %(model_id)s AND chunk_id = ANY(%(ids)s::bigint[])
  AND claimed_by = %(worker_id)s;

-- fail_model_work --
-- Chunks a model could not embed: retried with a backoff, then parked (failed).
UPDATE model_pending AS p
SET attempts = p.attempts + 1,
    last_error = input.error,
    failed = p.attempts + 1 >= %(max_attempts)s,
    retry_at = now() + make_interval(
        secs => %(retry_base_seconds)s::float8 * power(2, p.attempts)),
    claimed_by = NULL,
    lease_expires_at = NULL
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS input(id, error)
WHERE p.model_id = %(model_id)s AND p.chunk_id = input.id AND p.claimed_by = %(worker_id)s;

-- release_model_work --
-- Leased chunks given back unembedded (a fill claim cut short): claimable again at once,
-- no attempt counted.
UPDATE model_pending
SET claimed_by = NULL, lease_expires_at = NULL
WHERE model_id = %(model_id)s AND chunk_id = ANY(%(ids)s::bigint[])
  AND claimed_by = %(worker_id)s;

-- nothing_embedded --
-- No chunk has a vector yet (a fresh store: its first model may be any).
SELECT NOT EXISTS (SELECT 1 FROM chunks WHERE state = 'embedded') AS empty;

-- model_batch --
-- The event of a batch of a model's background work.
INSERT INTO events (kind, worker_id, batch_id, row_count, reused_count, token_count,
                    embed_ms, chunk_ids, detail)
VALUES ('model_batch', %(worker_id)s, %(batch_id)s, cardinality(%(written)s::bigint[]),
        %(reused)s, %(token_count)s, %(embed_ms)s, %(written)s::bigint[],
        jsonb_build_object('model', %(model)s::text, 'failed', %(failed)s::integer)
        || %(detail)s::jsonb);

-- model_queue_status --
-- Cheap: the queue's index, and the events' (kind, at) index for a remote model's
-- server still away (indexer_model_away).
SELECT m.name AS model, m.active,
       (SELECT count(*) FROM model_pending p WHERE p.model_id = m.id AND NOT p.failed) AS queued,
       (SELECT count(*) FROM model_pending p WHERE p.model_id = m.id AND p.failed) AS failed,
       s.away_since, s.away_error
FROM models AS m
LEFT JOIN indexer_model_away AS s ON s.model_id = m.id
ORDER BY m.id;

-- record_chunking --
-- How documents are cut: recorded by the first daemon; the row as it is.  With
-- %(replace)s, written over while no passage exists yet.
WITH recorded AS (
    INSERT INTO chunking (tokens, overlap) VALUES (%(tokens)s, %(overlap)s)
    ON CONFLICT (one) DO UPDATE
    SET tokens = excluded.tokens, overlap = excluded.overlap, recorded_at = now()
    WHERE %(replace)s AND NOT EXISTS (SELECT 1 FROM chunks WHERE document_id IS NOT NULL)
    RETURNING tokens, overlap, recorded_at
)
SELECT tokens, overlap, recorded_at FROM recorded
UNION ALL
SELECT tokens, overlap, recorded_at FROM chunking WHERE NOT EXISTS (SELECT 1 FROM recorded);

-- recut_documents --
-- New chunk settings: recorded, and every document of every source queued again (each
-- keeps its passages until its new ones replace them in one statement).
WITH recorded AS (
    INSERT INTO chunking (tokens, overlap) VALUES (%(tokens)s, %(overlap)s)
    ON CONFLICT (one) DO UPDATE
    SET tokens = excluded.tokens, overlap = excluded.overlap, recorded_at = now()
), queued AS (
    UPDATE source_documents
    SET version = version + 1, state = 'pending', attempts = 0, last_error = NULL,
        retry_at = NULL, claimed_by = NULL, lease_expires_at = NULL, queued_at = now()
    RETURNING id
), woken AS (
    SELECT pg_notify('indexer_chunks', current_schema())
)
SELECT (SELECT count(*) FROM queued) AS queued, (SELECT count(*) FROM woken) AS woken;
