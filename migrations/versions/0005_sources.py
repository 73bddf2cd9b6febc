"""Sources: the user's own tables and whole documents, chunked, embedded, searchable

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

sources
    A registered table: which column is the document's key (a single-column primary key,
    or a unique NOT NULL column), which columns are its text (joined by a blank line),
    which become metadata, and how far the back-fill of the rows already there has gone.
    ``add_source()`` registers a table and installs four statement-level triggers on it
    (INSERT, UPDATE, DELETE, TRUNCATE); ``remove_source()`` drops them and everything
    the indexer keeps for it.  The user's table is never altered beyond its triggers.

source_documents
    One row per document the indexer knows of: its queue state (pending, claimed,
    indexed, failed), a ``version`` bumped every time the document changes, its lease,
    attempts and last error, how many chunks it has and whether it was cut at the size
    limit.  The triggers only write here; the daemon reads the text from the user's
    table when it claims the document, chunks it, embeds the chunks (reusing cached
    vectors), and replaces the document's chunk set in one statement guarded by
    ``version`` and ``claimed_by``: a reader sees the old set or the new one, and a
    document changed while it was being embedded is written by nobody (it is pending
    again).  Deleting a document deletes its row here and, by the foreign key, its
    chunks, in the user's own transaction: no orphan chunk, ever.

chunks.document_id, source_id, doc_key, position, char_start, char_end
    A document's chunks are rows of ``chunks`` like any other (search_chunks sees
    them); these columns say whose passage a row is and where it lies in the document's
    text: ``text[char_start:char_end]`` (0-based, in characters) is the row's content.
    Rows inserted straight into chunks leave them NULL and work as before.

documents
    A built-in source for applications with no table of their own: insert a document
    of any length (content, metadata) and it is chunked, embedded and searchable.

search_documents(query, k, filter, source_name, max_passages)
    The k documents whose best chunk is nearest to the query, each with its best
    passage, its source and key, its metadata, and its ``passages`` best chunks.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
DO $$
BEGIN
    IF to_regclass(format('%I.documents', current_schema())) IS NOT NULL THEN
        RAISE EXCEPTION 'a relation named documents already exists in schema %: the indexer '
                        'needs that name for its built-in documents table; give the indexer '
                        'a schema of its own (INDEXER_SCHEMA)', current_schema();
    END IF;
END
$$;

CREATE TABLE sources (
    id               integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    table_schema     text NOT NULL,
    table_name       text NOT NULL,
    key_column       text NOT NULL,
    key_type         text NOT NULL,
    text_columns     text[] NOT NULL CHECK (cardinality(text_columns) > 0),
    metadata_columns text[] NOT NULL DEFAULT '{}',
    metadata_json    text,
    builtin          boolean NOT NULL DEFAULT false,
    backfill_after   text,
    backfilled       bigint NOT NULL DEFAULT 0,
    backfill_done_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (table_schema, table_name)
);
COMMENT ON TABLE sources IS
    'Tables whose rows the indexer keeps chunked and embedded (add_source / remove_source)';
COMMENT ON COLUMN sources.key_type IS 'format_type() of the key column';
COMMENT ON COLUMN sources.metadata_json IS
    'A jsonb column whose object is merged into every chunk''s metadata';
COMMENT ON COLUMN sources.backfill_after IS
    'The last key the back-fill queued (text); NULL before the first range';

CREATE TABLE source_documents (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key to sources: every row the triggers queue would pay its check
    -- (40% of what a trigger adds to a bulk INSERT, measured), and hold a share lock on
    -- the source's row until the application commits.  remove_source deletes them.
    source_id        integer NOT NULL,
    doc_key          text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'claimed', 'indexed', 'failed')),
    version          integer NOT NULL DEFAULT 1,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    retry_at         timestamptz,
    claimed_by       uuid,
    lease_expires_at timestamptz,
    chunk_count      integer,
    truncated        boolean NOT NULL DEFAULT false,
    queued_at        timestamptz NOT NULL DEFAULT now(),
    indexed_at       timestamptz,
    UNIQUE (source_id, doc_key)
);
COMMENT ON TABLE source_documents IS
    'Every document of every source: its queue state, version, chunk count, last error';
COMMENT ON COLUMN source_documents.truncated IS
    'The document was longer than INDEXER_DOCUMENT_MAX_CHARS or made more than '
    'INDEXER_DOCUMENT_MAX_CHUNKS chunks: only its beginning is indexed';
CREATE INDEX source_documents_queue_idx ON source_documents (id)
    WHERE state IN ('pending', 'claimed');
CREATE INDEX source_documents_failed_idx ON source_documents (source_id)
    WHERE state = 'failed';

ALTER TABLE chunks
    ADD COLUMN document_id bigint REFERENCES source_documents (id) ON DELETE CASCADE,
    ADD COLUMN source_id   integer,
    ADD COLUMN doc_key     text,
    ADD COLUMN position    integer,
    ADD COLUMN char_start  integer,
    ADD COLUMN char_end    integer;
COMMENT ON COLUMN chunks.document_id IS
    'The source document this row is a passage of (NULL: a row inserted straight here)';
COMMENT ON COLUMN chunks.position IS 'The passage''s place in its document, from 0';
COMMENT ON COLUMN chunks.char_start IS
    'Where the passage starts in the document''s text (0-based, characters)';
COMMENT ON COLUMN chunks.char_end IS 'Where it ends (exclusive)';
CREATE INDEX chunks_document_idx ON chunks (document_id, position)
    WHERE document_id IS NOT NULL;

-- Queue documents by key (in key order, as the triggers insert the keys they delete:
-- two transactions wait for each other's keys in the same order, not in a cycle):
-- new ones pending, known ones pending again with their
-- version bumped (a daemon embedding the old version will then write nothing), unless
-- ``requeue`` is false (the back-fill: a document already queued is left alone).
-- Wakes the daemons.  Returns how many documents were queued.
CREATE FUNCTION queue_documents(source integer, keys text[], requeue boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    queued bigint;
BEGIN
    IF keys IS NULL OR cardinality(keys) = 0 THEN
        RETURN 0;
    END IF;
    IF requeue THEN
        INSERT INTO source_documents AS d (source_id, doc_key)
        SELECT DISTINCT source, k FROM unnest(keys) AS k ORDER BY k
        ON CONFLICT (source_id, doc_key) DO UPDATE
        SET version = d.version + 1, state = 'pending', attempts = 0, last_error = NULL,
            retry_at = NULL, claimed_by = NULL, lease_expires_at = NULL, queued_at = now();
    ELSE
        INSERT INTO source_documents (source_id, doc_key)
        SELECT DISTINCT source, k FROM unnest(keys) AS k ORDER BY k
        ON CONFLICT (source_id, doc_key) DO NOTHING;
    END IF;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        -- The indexer's schema, as chunks_notify sends it (not current_schema(): under
        -- the fixed search_path below, that is pg_catalog).
        PERFORM pg_notify('indexer_chunks', (
            SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = 'source_documents'::regclass));
    END IF;
    RETURN queued;
END
$$;

-- The triggers on a source table (statement level, with transition tables: one
-- statement, however many rows, costs one query here).  SECURITY DEFINER: the
-- application's role needs no right on the indexer's tables for its own writes to
-- go through.  An UPDATE queues only the rows whose text or metadata columns (or key)
-- changed; a row whose key changed is the old key deleted and the new one inserted.
CREATE FUNCTION source_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    src sources;
    keys text[];
    gone text[];
    watched text;
BEGIN
    SELECT * INTO src FROM sources WHERE id = TG_ARGV[0]::integer;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM source_documents WHERE source_id = src.id;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT array_agg(o.%I::text) FROM old_rows o', src.key_column)
            INTO gone;
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('SELECT array_agg(n.%I::text) FROM new_rows n', src.key_column)
            INTO keys;
    ELSE
        SELECT string_agg(format('o.%1$I::text IS DISTINCT FROM n.%1$I::text', c), ' OR ')
        INTO watched
        FROM unnest(src.text_columns || src.metadata_columns
                    || array_remove(ARRAY[src.metadata_json], NULL)) AS c;
        EXECUTE format(
            'SELECT array_agg(n.%1$I::text) FROM new_rows n LEFT JOIN old_rows o '
            'ON o.%1$I = n.%1$I WHERE o.%1$I IS NULL OR %2$s', src.key_column, watched)
            INTO keys;
        EXECUTE format(
            'SELECT array_agg(o.%1$I::text) FROM old_rows o LEFT JOIN new_rows n '
            'ON n.%1$I = o.%1$I WHERE n.%1$I IS NULL', src.key_column)
            INTO gone;
    END IF;
    IF gone IS NOT NULL THEN
        -- A back-fill may have queued these keys in a transaction not committed yet,
        -- which this DELETE would not see: inserting the same keys first waits for it
        -- (the unique index), and the DELETE, a new statement, then sees its rows.
        INSERT INTO source_documents (source_id, doc_key)
        SELECT DISTINCT src.id, k FROM unnest(gone) AS k ORDER BY k
        ON CONFLICT (source_id, doc_key) DO NOTHING;
        DELETE FROM source_documents WHERE source_id = src.id AND doc_key = ANY(gone);
    END IF;
    PERFORM queue_documents(src.id, keys);
    RETURN NULL;
END
$$;

-- Both run with a fixed search_path (pg_catalog first, so no object of another schema
-- can stand in for a built-in one): they run inside the application's statements,
-- whatever its search_path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION source_changed() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION queue_documents(integer, text[], boolean) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;

-- Register a table as a source: check it, record it, install its triggers.  The rows
-- already in it are queued by the daemon's back-fill (backfill_source), a key range
-- at a time, so that no long lock or transaction is held on the table.
CREATE FUNCTION add_source(
    source_table text,
    key_column text DEFAULT NULL,
    text_columns text[] DEFAULT NULL,
    metadata_columns text[] DEFAULT '{}',
    metadata_json text DEFAULT NULL,
    source_name text DEFAULT NULL
) RETURNS sources
LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
    kind "char";
    nsp text;
    relname text;
    key_att record;
    pk_columns text[];
    col text;
    src sources;
    qualified text;
    op text;
BEGIN
    BEGIN
        rel := to_regclass(source_table);
    EXCEPTION WHEN invalid_name OR invalid_parameter_value OR syntax_error
                   OR feature_not_supported THEN
        RAISE EXCEPTION '% is not a table name', source_table USING ERRCODE = 'invalid_name';
    END;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'no table %', source_table USING ERRCODE = 'undefined_table';
    END IF;
    SELECT c.relkind, n.nspname, c.relname INTO kind, nsp, relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    qualified := format('%I.%I', nsp, relname);
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table (a source must be a table or a partitioned table)',
            qualified USING ERRCODE = 'wrong_object_type';
    END IF;
    IF EXISTS (SELECT 1 FROM sources s WHERE s.table_schema = nsp AND s.table_name = relname) THEN
        RAISE EXCEPTION '% is already a source', qualified USING ERRCODE = 'duplicate_object';
    END IF;
    -- Its triggers would queue the indexer's own writes (chunks: without end).
    IF nsp = current_schema() AND relname IN ('chunks', 'events', 'sources', 'source_documents',
                                              'vector_cache', 'alembic_version') THEN
        RAISE EXCEPTION '% is the indexer''s own table, not a source', qualified
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM sources s WHERE s.name = coalesce(source_name, qualified)) THEN
        RAISE EXCEPTION 'a source named % already exists', coalesce(source_name, qualified)
            USING ERRCODE = 'duplicate_object';
    END IF;
    IF NOT has_table_privilege(rel, 'SELECT') OR NOT has_table_privilege(rel, 'TRIGGER') THEN
        RAISE EXCEPTION 'role % may not read % or create triggers on it: GRANT SELECT, TRIGGER '
                        'ON % TO %', current_user, qualified, qualified, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO pk_columns
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = rel AND i.indisprimary;
    IF key_column IS NULL THEN
        IF pk_columns IS NULL THEN
            RAISE EXCEPTION '% has no primary key: give a unique, NOT NULL key column', qualified
                USING ERRCODE = 'invalid_table_definition';
        ELSIF cardinality(pk_columns) > 1 THEN
            RAISE EXCEPTION '% has a primary key of % columns: give one unique, NOT NULL key '
                            'column', qualified, cardinality(pk_columns)
                USING ERRCODE = 'invalid_table_definition';
        END IF;
        key_column := pk_columns[1];
    END IF;
    SELECT a.attnum, a.attnotnull, format_type(a.atttypid, NULL) AS type INTO key_att
    FROM pg_attribute a
    WHERE a.attrelid = rel AND a.attname = key_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% has no column %', qualified, quote_ident(key_column)
            USING ERRCODE = 'undefined_column';
    END IF;
    IF NOT key_att.attnotnull OR NOT EXISTS (
        SELECT 1 FROM pg_index i
        WHERE i.indrelid = rel AND i.indisunique AND i.indnkeyatts = 1
          AND i.indkey[0] = key_att.attnum AND i.indpred IS NULL AND i.indexprs IS NULL
    ) THEN
        RAISE EXCEPTION 'key column % of % is not unique and NOT NULL (no primary key or unique '
                        'index on it alone)', quote_ident(key_column), qualified
            USING ERRCODE = 'invalid_table_definition';
    END IF;

    IF text_columns IS NULL OR cardinality(text_columns) = 0 THEN
        RAISE EXCEPTION 'a source needs at least one text column'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH col IN ARRAY text_columns || coalesce(metadata_columns, '{}')
                         || array_remove(ARRAY[metadata_json], NULL)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col
                       AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION '% has no column %', qualified, quote_ident(col)
                USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;
    IF metadata_json IS NOT NULL AND (
        SELECT a.atttypid <> 'jsonb'::regtype FROM pg_attribute a
        WHERE a.attrelid = rel AND a.attname = metadata_json
    ) THEN
        RAISE EXCEPTION 'metadata column % of % is not jsonb', quote_ident(metadata_json), qualified
            USING ERRCODE = 'datatype_mismatch';
    END IF;

    INSERT INTO sources (name, table_schema, table_name, key_column, key_type, text_columns,
                         metadata_columns, metadata_json)
    VALUES (coalesce(source_name, qualified), nsp, relname, key_column, key_att.type,
            text_columns, coalesce(metadata_columns, '{}'), metadata_json)
    RETURNING * INTO src;

    FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        EXECUTE format(
            'CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT '
            'EXECUTE FUNCTION %I.source_changed(%L)',
            'indexer_source_' || op, upper(op), qualified,
            CASE op WHEN 'insert' THEN 'NEW TABLE AS new_rows'
                    WHEN 'update' THEN 'OLD TABLE AS old_rows NEW TABLE AS new_rows'
                    ELSE 'OLD TABLE AS old_rows' END,
            current_schema(), src.id);
    END LOOP;
    EXECUTE format('CREATE TRIGGER indexer_source_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %I.source_changed(%L)',
                   qualified, current_schema(), src.id);
    PERFORM pg_notify('indexer_chunks', current_schema());
    RETURN src;
END
$$;

-- Stop following a source's table (by name): drop its triggers, if the table still
-- exists.  DROP TRIGGER locks the table until the transaction ends, so run this in a
-- transaction of its own before remove_source (the indexer's CLI and API do): the
-- deletion of the source's chunks then holds no lock on the application's table.
CREATE FUNCTION detach_source(source_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    src sources;
    op text;
BEGIN
    SELECT * INTO src FROM sources WHERE name = source_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no source named %', source_name USING ERRCODE = 'undefined_object';
    END IF;
    IF src.builtin THEN
        RAISE EXCEPTION 'documents is the built-in source: delete its rows instead'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF to_regclass(format('%I.%I', src.table_schema, src.table_name)) IS NOT NULL THEN
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I', 'indexer_source_' || op,
                           src.table_schema, src.table_name);
        END LOOP;
    END IF;
END
$$;

-- Unregister a source (by name): detach it (above), then delete its documents and
-- their chunks.  Returns the number of chunks deleted.  The triggers are dropped
-- before the source's row is touched, so a write of the application in flight (its
-- trigger holds a share lock on that row) finishes first, and none waits on this.
CREATE FUNCTION remove_source(source_name text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    src_id integer;
    removed bigint;
BEGIN
    PERFORM detach_source(source_name);
    SELECT id INTO src_id FROM sources WHERE name = source_name;
    -- The source's row first: that waits for a back-fill in flight (it holds the row),
    -- so no document of this source can be queued after the next statement.
    DELETE FROM sources WHERE id = src_id;
    SELECT coalesce(sum(chunk_count), 0) INTO removed
    FROM source_documents WHERE source_id = src_id;
    DELETE FROM source_documents WHERE source_id = src_id;  -- and their chunks (cascade)
    RETURN removed;
END
$$;

-- Queue the next range of a source's existing rows (at most ``batch``, in key order,
-- after the last key queued), and record how far it got: one short transaction that
-- reads the table through its key's index.  NULL when the back-fill is done or another
-- daemon is running this source's range; else the number of rows read.
CREATE FUNCTION backfill_source(source integer, batch integer DEFAULT 5000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    src sources;
    keys text[];
    last_key text;
    n integer;
BEGIN
    -- Never make the application wait: a range that would wait on a lock of an
    -- application's transaction (a row it is writing) gives up at once, to be tried at
    -- the daemon's next step.
    PERFORM set_config('lock_timeout', '200ms', true);
    SELECT * INTO src FROM sources
    WHERE id = source AND backfill_done_at IS NULL
    FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'WITH b AS (SELECT t.%1$I AS k FROM %2$I.%3$I t '
        '           WHERE $1::text IS NULL OR t.%1$I > $1::text::%4$s '
        '           ORDER BY t.%1$I LIMIT $2) '
        'SELECT array_agg(k::text), (SELECT k::text FROM b ORDER BY b.k DESC LIMIT 1) FROM b',
        src.key_column, src.table_schema, src.table_name, src.key_type)
        INTO keys, last_key USING src.backfill_after, batch;
    n := coalesce(cardinality(keys), 0);
    PERFORM queue_documents(src.id, keys, false);
    -- A row deleted (or its key changed) after this range was read, by a transaction
    -- whose trigger ran first, leaves no document: the insert above waited for that
    -- transaction (its trigger inserts the keys it deletes), and this look, with a new
    -- snapshot, sees the row gone.
    IF n > 0 THEN
        EXECUTE format(
            'DELETE FROM source_documents d WHERE d.source_id = $1 AND d.doc_key = ANY($2) '
            'AND NOT EXISTS (SELECT 1 FROM %2$I.%3$I t WHERE t.%1$I = d.doc_key::%4$s)',
            src.key_column, src.table_schema, src.table_name, src.key_type)
            USING src.id, keys;
    END IF;
    UPDATE sources
    SET backfill_after = coalesce(last_key, backfill_after),
        backfilled = backfilled + n,
        backfill_done_at = CASE WHEN n < batch THEN now() END
    WHERE id = src.id;
    RETURN n;
END
$$;

-- The text and metadata of a source's documents, by key: the text columns joined by a
-- blank line (NULL and empty ones skipped), cut to ``max_chars`` characters; the
-- metadata columns as a JSON object (merged with the metadata_json column's object).
-- A key with no row (deleted meanwhile) is simply absent.
CREATE FUNCTION source_texts(source integer, keys text[], max_chars integer)
RETURNS TABLE (doc_key text, content text, metadata jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    src sources;
    text_expr text;
    meta_expr text;
BEGIN
    SELECT * INTO src FROM sources WHERE id = source;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT string_agg(format('nullif(t.%I::text, %L)', c, ''), ', ') INTO text_expr
    FROM unnest(src.text_columns) AS c;
    SELECT 'jsonb_build_object(' || coalesce(string_agg(format('%L, t.%I', c, c), ', '), '')
           || ')' INTO meta_expr
    FROM unnest(src.metadata_columns) AS c;
    IF src.metadata_json IS NOT NULL THEN
        meta_expr := format(
            '(CASE WHEN jsonb_typeof(t.%1$I) = %2$L THEN t.%1$I ELSE %3$L::jsonb END || %4$s)',
            src.metadata_json, 'object', '{}', meta_expr);
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT t.%1$I::text, left(concat_ws(E''\n\n'', %2$s), $2), %3$s '
        'FROM %4$I.%5$I t WHERE t.%1$I = ANY($1::text[]::%6$s[])',
        src.key_column, text_expr, meta_expr, src.table_schema, src.table_name, src.key_type)
        USING keys, max_chars;
END
$$;

-- Per source: documents indexed, pending, in flight, failed, cut at the size limit;
-- chunks; the lag (how long the oldest pending document has waited); the back-fill.
CREATE VIEW indexer_source_status AS
SELECT s.name AS source,
       format('%I.%I', s.table_schema, s.table_name) AS source_table,
       coalesce(d.documents, 0) AS documents,
       coalesce(d.indexed, 0) AS indexed,
       coalesce(d.pending, 0) AS pending,
       coalesce(d.in_flight, 0) AS in_flight,
       coalesce(d.failed, 0) AS failed,
       coalesce(d.truncated, 0) AS truncated,
       coalesce(d.chunks, 0) AS chunks,
       now() - d.oldest_queued_at AS lag,
       s.backfill_done_at IS NOT NULL AS backfilled,
       s.backfilled AS backfilled_rows
FROM sources s
LEFT JOIN LATERAL (
    SELECT count(*) AS documents,
           count(*) FILTER (WHERE state = 'indexed') AS indexed,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'claimed') AS in_flight,
           count(*) FILTER (WHERE state = 'failed') AS failed,
           count(*) FILTER (WHERE truncated) AS truncated,
           coalesce(sum(chunk_count) FILTER (WHERE state = 'indexed'), 0) AS chunks,
           min(queued_at) FILTER (WHERE state IN ('pending', 'claimed')) AS oldest_queued_at
    FROM source_documents
    WHERE source_id = s.id
) d ON true;
COMMENT ON VIEW indexer_source_status IS
    'Per source: documents indexed / pending / in flight / failed / truncated, chunks, '
    'lag of the oldest pending document, back-fill progress';

-- The k documents nearest to a query vector, scored by their best chunk (measured:
-- see README), each with its best passage and up to ``max_passages`` best chunks (as JSON,
-- best first), among chunks whose metadata contains ``filter``, of one source or all.
-- Chunks are read nearest first, from the HNSW index, widening the read until k
-- documents are found (one long document can own many of the nearest chunks).
CREATE FUNCTION search_documents(
    query vector,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    source_name text DEFAULT NULL,
    max_passages integer DEFAULT 3
) RETURNS TABLE (source text, key text, score double precision, content text,
                 "position" integer, char_start integer, char_end integer, metadata jsonb,
                 passages jsonb)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    sid integer;
    wanted integer := greatest(coalesce(k, 10), 0);
    width integer;
    read_count integer;
    docs integer;
    iterative boolean;
BEGIN
    IF wanted = 0 THEN
        RETURN;
    END IF;
    IF search_documents.source_name IS NOT NULL THEN
        SELECT s.id INTO sid FROM sources s WHERE s.name = search_documents.source_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no source named %', search_documents.source_name
                USING ERRCODE = 'undefined_object';
        END IF;
    END IF;
    -- pgvector 0.8+: the iterative scan keeps reading the index until enough chunks
    -- pass the conditions (for this transaction only, if the session has it off).
    -- pgvector 0.7 has none, and one HNSW scan yields at most ef_search rows: widen
    -- ef_search with the read instead (a filter can then still leave fewer than k).
    iterative := EXISTS (
        SELECT 1 FROM pg_extension
        WHERE extname = 'vector'
          AND string_to_array(split_part(extversion, '-', 1), '.')::int[] >= '{0,8}');
    IF iterative AND coalesce(current_setting('hnsw.iterative_scan', true), 'off') = 'off' THEN
        PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
    END IF;
    width := greatest(wanted * 4, 40);
    LOOP
        IF NOT iterative
           AND coalesce(current_setting('hnsw.ef_search', true), '40')::integer < width THEN
            PERFORM set_config('hnsw.ef_search', least(width, 1000)::text, true);
        END IF;
        SELECT count(*), count(DISTINCT n.document_id) INTO read_count, docs
        FROM (SELECT c.document_id
              FROM chunks c
              WHERE c.embedding IS NOT NULL AND c.document_id IS NOT NULL
                AND c.metadata @> search_documents.filter AND (sid IS NULL OR c.source_id = sid)
              ORDER BY c.embedding <=> query
              LIMIT width) n;
        EXIT WHEN docs >= wanted OR read_count < width OR width >= 100000;
        width := width * 4;
    END LOOP;
    RETURN QUERY
    WITH nearest AS (
        SELECT c.document_id, c.source_id, c.doc_key, c.content, c.position, c.char_start,
               c.char_end, c.metadata, 1 - (c.embedding <=> query) AS score
        FROM chunks c
        WHERE c.embedding IS NOT NULL AND c.document_id IS NOT NULL
          AND c.metadata @> search_documents.filter AND (sid IS NULL OR c.source_id = sid)
        ORDER BY c.embedding <=> query
        LIMIT width
    ), ranked AS (
        SELECT n.*, row_number() OVER (PARTITION BY n.document_id
                                       ORDER BY n.score DESC, n.position) AS rank
        FROM nearest n
    ), best AS (
        SELECT r.* FROM ranked r WHERE r.rank = 1 ORDER BY r.score DESC LIMIT wanted
    )
    SELECT s.name, b.doc_key, b.score, b.content, b.position, b.char_start, b.char_end,
           b.metadata,
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'content', r.content, 'score', r.score, 'position', r.position,
                       'char_start', r.char_start, 'char_end', r.char_end)
                   ORDER BY r.rank), '[]'::jsonb)
            FROM ranked r
            WHERE r.document_id = b.document_id
              AND r.rank <= greatest(coalesce(search_documents.max_passages, 3), 1))
    FROM best b
    JOIN sources s ON s.id = b.source_id
    ORDER BY b.score DESC, b.document_id;
END
$$;

CREATE TABLE documents (
    id         bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    content    text NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE documents IS
    'Documents of any length: insert content (and metadata); the indexer chunks, embeds '
    'and indexes them (search_documents)';

SELECT add_source('documents', 'id', ARRAY['content'], '{}', 'metadata', 'documents');
UPDATE sources SET builtin = true, backfill_done_at = now() WHERE name = 'documents';
"""

DOWNGRADE = r"""
DROP TABLE documents;
DROP FUNCTION search_documents(vector, integer, jsonb, text, integer);
DROP VIEW indexer_source_status;
DROP FUNCTION source_texts(integer, text[], integer);
DROP FUNCTION backfill_source(integer, integer);
DO $$
DECLARE
    src record;
    op text;
BEGIN
    FOR src IN SELECT * FROM sources WHERE NOT builtin LOOP
        IF to_regclass(format('%I.%I', src.table_schema, src.table_name)) IS NOT NULL THEN
            FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I', 'indexer_source_' || op,
                               src.table_schema, src.table_name);
            END LOOP;
        END IF;
    END LOOP;
END
$$;
DROP FUNCTION remove_source(text);
DROP FUNCTION detach_source(text);
DROP FUNCTION add_source(text, text, text[], text[], text, text);
DROP FUNCTION source_changed();
DROP FUNCTION queue_documents(integer, text[], boolean);
DELETE FROM chunks WHERE document_id IS NOT NULL;
DROP INDEX chunks_document_idx;
ALTER TABLE chunks
    DROP COLUMN document_id,
    DROP COLUMN source_id,
    DROP COLUMN doc_key,
    DROP COLUMN position,
    DROP COLUMN char_start,
    DROP COLUMN char_end;
DROP TABLE source_documents;
DROP TABLE sources;
"""


def _run(script: str) -> None:
    op.get_bind().connection.driver_connection.execute(script)  # type: ignore[union-attr]


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
