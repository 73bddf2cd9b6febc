-- Similarity search in plain SQL.  Run with: psql "$(indexer dsn)" -f sql/search.sql
-- (or paste the statements into your application).  `indexer migrate` creates the
-- functions used here; every query below is served by the HNSW index chunks_embedding_idx
-- (check with EXPLAIN).  Scores are cosine similarities (1 = same direction).

-- Rows nearest to an existing row (itself excluded).
SELECT id, round(score::numeric, 4) AS score, left(content, 80) AS snippet
FROM similar_chunks(1, 5);

-- Rows nearest to a vector.  Your application computes the query vector with the same
-- model (`indexer embed`, the Python `Embedder`, or POST /embed), then:
--   SELECT id, score, content FROM search_chunks($1::vector, 10);
-- Here the vector of row 1 stands in for it (psql's \gset keeps it in :q).  Pass the
-- vector as a value, as your application would: a subquery as the argument keeps
-- PostgreSQL from inlining the function, and then the index cannot serve it.
SELECT embedding AS q FROM chunks WHERE id = 1 \gset
SELECT id, round(score::numeric, 4) AS score, left(content, 80) AS snippet
FROM search_chunks(:'q', 5);

-- Only rows whose metadata contains a JSON object (the third argument; '{}' matches
-- all).  With a filter, pgvector's iterative scan (0.8+) keeps scanning until enough
-- rows pass it; a larger ef_search trades speed for recall (the default is 40;
-- indexer uses 100).  This is the function `indexer search`, the Python API and
-- POST /search run.  pgvector 0.7 has no iterative scan and refuses the setting, so
-- it is set only where the installed version has it.
SET hnsw.ef_search = 100;
DO $$
BEGIN
    IF (SELECT string_to_array(split_part(extversion, '-', 1), '.')::int[] >= '{0,8}'
        FROM pg_extension WHERE extname = 'vector') THEN
        PERFORM set_config('hnsw.iterative_scan', 'strict_order', false);
    END IF;
END
$$;
SELECT id, round(score::numeric, 4) AS score, left(content, 80) AS snippet
FROM search_chunks(:'q', 5, '{"topic": "db"}');

-- The query the functions wrap, when you want your own columns or conditions.
SELECT id, 1 - (embedding <=> :'q') AS score, left(content, 80) AS snippet
FROM chunks
WHERE embedding IS NOT NULL AND metadata @> '{"topic": "db"}'
ORDER BY embedding <=> :'q'
LIMIT 5;

-- Prove the index is used (on a tiny table the planner may prefer a sequential scan;
-- from a few thousand rows on it takes the index):
EXPLAIN SELECT * FROM search_chunks(:'q', 5);
