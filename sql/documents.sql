-- Your own tables as sources, the built-in documents table, and search by document, in
-- plain SQL.  Run with: psql "$(indexer dsn)" -f sql/documents.sql
-- `indexer migrate` creates the functions used here.  The daemon (`indexer run`) does the
-- embedding: until it has run, the documents below are pending and search_documents
-- returns no rows.  The script cleans up after itself.

-- A table of your own: a single-column primary key (or pass key_column => 'col', a
-- unique NOT NULL column), text columns, metadata columns.
CREATE TABLE example_notes (
    id     bigint PRIMARY KEY,
    title  text,
    body   text,
    lang   text,
    extra  jsonb
);
INSERT INTO example_notes VALUES
    (1, 'PostgreSQL', 'An open source relational database.', 'en', '{"tags": ["db"]}'),
    (2, 'Cats', 'Cats sleep up to sixteen hours a day.', 'en', '{}');

-- Register it: the text is title and body joined by a blank line; lang becomes metadata
-- and the object in extra is merged in.  The rows already there are queued by the
-- daemon's back-fill; later writes are queued by the table's triggers.
SELECT name, key_column, key_type, text_columns
FROM add_source('example_notes',
                text_columns => ARRAY['title', 'body'],
                metadata_columns => ARRAY['lang'],
                metadata_json => 'extra');

-- An insert is queued at once (in your transaction), an update of the text queues the
-- row again, an update of other columns queues nothing, a delete removes the document
-- and its chunks at once.
INSERT INTO example_notes VALUES (3, 'Markets', 'The stock market fell sharply today.', 'en', '{}');
UPDATE example_notes SET body = 'Stocks fell sharply today.' WHERE id = 3;
SELECT d.doc_key, d.state, d.version
FROM source_documents d JOIN sources s ON s.id = d.source_id
WHERE s.name = 'public.example_notes'
ORDER BY d.doc_key;
DELETE FROM example_notes WHERE id = 3;

-- The built-in documents table: documents of any length, no table of your own needed.
INSERT INTO documents (content, metadata)
VALUES ('A long report about relational databases ...', '{"lang": "en"}');

-- Per source: documents indexed / pending / in flight / failed / truncated, chunks, lag,
-- back-fill progress (what `indexer sources list` prints).
SELECT source, indexed, pending, in_flight, failed, truncated, chunks, lag, backfilled,
       backfilled_rows
FROM indexer_source_status;

-- Search by document: the k documents whose best passage is nearest to a query vector,
-- each once, with its best passage, that passage's span in the document's text
-- (char_start to char_end, 0-based, end exclusive) and its best passages as JSON.
-- Your application computes the vector with the same model (`indexer embed`, the Python
-- `Embedder`, or POST /embed) and passes it as a parameter; here a stand-in vector
-- (all 384 components equal) is kept in :q.
SELECT array_fill(1.0 / sqrt(384), ARRAY[384])::vector AS q \gset
SELECT source, key, round(score::numeric, 4) AS score, left(content, 60) AS passage,
       char_start, char_end
FROM search_documents(:'q', 5);

-- Only one source's documents, only passages whose metadata contains an object, and two
-- passages per document.
SELECT source, key, round(score::numeric, 4) AS score, jsonb_array_length(passages) AS passages
FROM search_documents(:'q', 5, '{"lang": "en"}', 'public.example_notes', 2);

-- Unregister: drops the triggers, deletes the source's documents and chunks (returns how
-- many chunks); the table and its rows stay.
SELECT remove_source('public.example_notes');
DROP TABLE example_notes;
DELETE FROM documents WHERE content LIKE 'A long report about relational databases%';
