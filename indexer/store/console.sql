-- What the web console reads besides the status views (indexer/http/console.py), by
-- name.  indexer/store/console.py runs them through the Store, like queries.sql's.

-- throughput --
-- The last hour of work, minute by minute, from the events: rows and passages written
-- (a batch of documents names them in detail.documents: the rule indexer_status uses
-- to tell its rows_per_second from its passages_per_second), how many of them reused a
-- cached vector, tokens, and the batches completed and failed.  Every minute of the
-- hour is there, an idle one with zeros, oldest first; the last one is the current
-- minute, still filling.  events_kind_at_idx keeps it to the hour's batches.
WITH minutes AS (
    SELECT generate_series(date_trunc('minute', now()) - interval '59 minutes',
                           date_trunc('minute', now()), interval '1 minute') AS minute
), work AS (
    SELECT date_trunc('minute', e.at) AS minute,
           sum(e.row_count) FILTER (WHERE e.kind = 'batch_completed'
                                      AND NOT e.detail ? 'documents') AS rows,
           sum(e.row_count) FILTER (WHERE e.kind = 'batch_completed'
                                      AND e.detail ? 'documents') AS passages,
           sum(e.reused_count) FILTER (WHERE e.kind = 'batch_completed') AS reused,
           sum(e.token_count) FILTER (WHERE e.kind = 'batch_completed') AS tokens,
           count(*) FILTER (WHERE e.kind = 'batch_completed') AS batches,
           count(*) FILTER (WHERE e.kind = 'batch_failed') AS failed_batches
    FROM events e
    WHERE e.kind IN ('batch_completed', 'batch_failed')
      AND e.at >= date_trunc('minute', now()) - interval '59 minutes'
    GROUP BY 1
)
SELECT m.minute,
       coalesce(w.rows, 0) AS rows,
       coalesce(w.passages, 0) AS passages,
       coalesce(w.reused, 0) AS reused,
       coalesce(w.tokens, 0) AS tokens,
       coalesce(w.batches, 0) AS batches,
       coalesce(w.failed_batches, 0) AS failed_batches
FROM minutes m
LEFT JOIN work w ON w.minute = m.minute
ORDER BY m.minute;

-- passage_context --
-- The current text of documents around their passages: for each (source, key), from
-- character %(starts)s (0-based) to %(ends)s, read with source_texts() (migration
-- 0005), which reads the text the daemon chunked.  A document (or source) that is gone
-- has no row; n is the place of the request in the arrays, from 1.
SELECT h.n, substr(t.content, h.start + 1, h.stop - h.start) AS text
FROM unnest(%(sources)s::text[], %(keys)s::text[], %(starts)s::integer[],
            %(ends)s::integer[]) WITH ORDINALITY AS h(source, key, start, stop, n)
JOIN sources s ON s.name = h.source
CROSS JOIN LATERAL source_texts(s.id, ARRAY[h.key], h.stop) AS t
ORDER BY h.n;
