"""Models: a registry, each model's vectors side by side, an atomic switch with rollback

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

models
    One row per model: its name, dimension, what decides its vectors (``record``, the
    daemon's description of it, and ``fingerprint``, the sha256 of the parts that
    decide them), where its vectors are kept (``storage``), whether they are stored as
    ``halfvec`` (2 bytes a dimension), and whether it is the **active** model: the
    one search uses when no model is named, and the one the daemon embeds new text
    with first.  At most one model is active.

    The upgrade registers the model whose vectors ``chunks.embedding`` already holds,
    active, with ``storage = 'column'``: its vectors stay where they are, and nothing
    is embedded again.  Its ``record`` and ``fingerprint`` are empty until the first
    daemon that runs it fills them in (``adopt_model``); from then on, a daemon whose
    model files give another fingerprint under that name refuses to start.

model_<id>_vectors
    Every other model's vectors, in a table of their own (``add_model`` creates it):
    ``chunk_id`` (a row or passage of ``chunks``), the ``content_version`` they were
    computed for, and ``embedding`` as ``vector(d)`` or ``halfvec(d)``, with its own
    HNSW index.  Why a table per model rather than one table with a partial
    expression index per model: a model's vectors are dropped with the table at once
    (no delete of millions of rows, no vacuum), each table has its own statistics (the
    planner never guesses one model's row count from another's), the index is a plain
    one that every query uses without repeating a cast and a predicate, and
    ``halfvec`` is a per-model choice.  A vector is served only while its chunk's
    ``content_version`` is the one it was computed for: an edited row's old vector is
    never compared with a query.  Row-level security on each table shows a role only
    the vectors of the chunks it may read.

model_pending
    The work each model still has: chunks whose text it has not embedded.  The daemon
    writes the active model's vectors first (the queue of ``chunks``, as before) and
    queues the chunk for every other model in the same statement; ``fill_model``
    queues, range by range, the chunks that were there before the model was added.
    A daemon claims entries with a lease, as it claims rows, newest work first.

add_model, activate_model, drop_model, adopt_model, fill_model, store_model_vectors
    ``activate_model(name, force)`` is one transaction: it refuses (with how many
    chunks lack a vector) unless every embedded chunk has one of the model's vectors,
    or ``force`` is true; the previous model keeps its vectors, and is kept current,
    until it is dropped, so activating it again is an instant rollback.
    ``drop_model`` refuses the active model.

search_chunks, search_documents, similar_chunks
    Take a model by name as their last argument (``model``, default: the active
    model); a query whose dimension is not the model's is refused with one line.
    Their earlier signatures are dropped, and the roles that could execute them can
    execute the new ones.

vector_cache
    ``embedding`` is ``vector`` of any dimension: every model's vectors are cached
    (by the model's cache key), whatever its dimension.

indexer_model_status
    Per model: active, dimension, storage, chunks covered and missing, work queued and
    parked (failed), the background work's rate over the last minute and its ETA.

chunking
    One row: how documents are cut into passages (tokens, overlap), recorded by the
    first daemon.  A daemon whose chunk settings differ is refused with one line while
    passages exist (they would otherwise mix passages of two sizes, silently); ``indexer
    sources recut`` records the new settings and queues every document again.

events
    A new kind, ``model_batch``: a batch of a model's background work (``detail.model``).
"""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# @s: the indexer's schema, @v: pgvector's (quoted identifiers); see migration 0006.
UPGRADE = r"""
CREATE TABLE @s.models (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    kind text NOT NULL DEFAULT 'local',
    dimension integer NOT NULL,
    halfvec boolean NOT NULL DEFAULT false,
    storage text NOT NULL,
    record jsonb,
    fingerprint text,
    active boolean NOT NULL DEFAULT false,
    fill_after bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    CONSTRAINT models_name_key UNIQUE (name),
    -- Any name a model folder may have (the upgrade's is the vectors' embedding_model),
    -- as data only: never put into SQL's text.
    CONSTRAINT models_name_check CHECK (name ~ '^[^[:cntrl:]]{1,200}$' AND name = btrim(name)),
    CONSTRAINT models_kind_check CHECK (kind IN ('local')),
    CONSTRAINT models_dimension_check CHECK (dimension BETWEEN 1 AND 16000),
    CONSTRAINT models_storage_check CHECK (storage IN ('column', 'table')),
    CONSTRAINT models_halfvec_check CHECK (NOT (halfvec AND storage = 'column'))
);
CREATE UNIQUE INDEX models_active_idx ON @s.models ((true)) WHERE active;
CREATE UNIQUE INDEX models_column_idx ON @s.models ((true)) WHERE storage = 'column';
COMMENT ON TABLE @s.models IS
    'The models whose vectors the indexer keeps (indexer models list|add|activate|drop); '
    'the active one serves search by default.';
COMMENT ON COLUMN @s.models.storage IS
    'column: chunks.embedding; table: model_<id>_vectors';
COMMENT ON COLUMN @s.models.record IS
    'Everything that decides the vectors, as the daemon describes the model (NULL until '
    'a daemon adopts a model registered by the upgrade)';
COMMENT ON COLUMN @s.models.fill_after IS
    'The chunks up to this id are queued for the model, or have its vector';

INSERT INTO @s.models (name, dimension, storage, active, activated_at, fill_after)
SELECT coalesce((SELECT c.embedding_model FROM @s.chunks c
                 WHERE c.embedding_model IS NOT NULL ORDER BY c.id DESC LIMIT 1),
                'all-MiniLM-L6-v2'),
       a.atttypmod, 'column', true, now(),
       coalesce((SELECT max(c.id) FROM @s.chunks c), 0)
FROM pg_attribute a
WHERE a.attrelid = '@s.chunks'::regclass AND a.attname = 'embedding';

-- A batch of a model's background work has an event of its own (its rate and ETA).
ALTER TABLE @s.events DROP CONSTRAINT events_kind_check;
ALTER TABLE @s.events ADD CONSTRAINT events_kind_check CHECK (kind IN (
    'worker_started', 'worker_stopped', 'batch_completed', 'batch_failed', 'model_batch'));

-- The vector cache keeps every model's vectors, of any dimension (keyed by model).
ALTER TABLE @s.vector_cache ALTER COLUMN embedding TYPE @v.vector;

CREATE TABLE @s.model_pending (
    model_id integer NOT NULL REFERENCES @s.models (id) ON DELETE CASCADE,
    chunk_id bigint NOT NULL,
    fresh boolean NOT NULL DEFAULT true,
    claimed_by uuid,
    lease_expires_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    retry_at timestamptz,
    failed boolean NOT NULL DEFAULT false,
    PRIMARY KEY (model_id, chunk_id)
);
CREATE INDEX model_pending_queue_idx ON @s.model_pending (model_id, fresh DESC, chunk_id)
    WHERE NOT failed;
COMMENT ON TABLE @s.model_pending IS
    'Chunks a model has not embedded yet (newest work first; failed: parked, see last_error)';

-- How documents are cut into passages, as the first daemon found it (a daemon with
-- other chunk settings is refused, and `indexer sources recut` changes it).
CREATE TABLE @s.chunking (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    tokens integer NOT NULL CHECK (tokens > 0),
    overlap integer NOT NULL CHECK (overlap >= 0),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @s.chunking IS
    'How documents are cut into passages (tokens, overlap): one row, recorded by the first '
    'daemon; indexer sources recut changes it and cuts every document again';

-- A passage is never queued in chunks (its document is, in source_documents): inserted
-- by the daemon without chunks.embedding (the active model keeps its vectors in a
-- table of its own), it is written, not pending.
CREATE OR REPLACE FUNCTION @s.chunks_before_write() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.content_version := 1;
        NEW.attempts := 0;
        NEW.last_error := NULL;
        NEW.retry_at := NULL;
        NEW.claimed_by := NULL;
        NEW.lease_expires_at := NULL;
        IF NEW.embedding IS NULL AND NEW.document_id IS NULL THEN
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

-- The table of a model's vectors (NULL for the model kept in chunks.embedding).
CREATE FUNCTION @s.model_vectors(model_id integer) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('%s.%I', @schema_ident_literal, 'model_' || model_id || '_vectors')
$$;

-- The model a search names (NULL: the active one), checked against the query's
-- dimension, and how to read its vectors: the relation (chunks as c, joined to the
-- model's vectors as v), the distance expression for the query ($1), and the
-- condition that a chunk has a vector.
CREATE FUNCTION @s.model_search(model text, query @v.vector,
                                OUT relation text, OUT distance text, OUT present text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m record;
BEGIN
    IF model IS NULL THEN
        SELECT x.id, x.name, x.dimension, x.storage, x.halfvec INTO m
        FROM @s.models x WHERE x.active;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no model is active: activate one (indexer models activate NAME)'
                USING ERRCODE = 'undefined_object';
        END IF;
    ELSE
        SELECT x.id, x.name, x.dimension, x.storage, x.halfvec INTO m
        FROM @s.models x WHERE x.name = model_search.model;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no model named %', model USING ERRCODE = 'undefined_object';
        END IF;
    END IF;
    IF @v.vector_dims(query) <> m.dimension THEN
        RAISE EXCEPTION 'the query vector has % dimensions; model % has %',
            @v.vector_dims(query), m.name, m.dimension USING ERRCODE = 'data_exception';
    END IF;
    IF m.storage = 'column' THEN
        relation := '@s.chunks c';
        distance := '(c.embedding OPERATOR(@v.<=>) $1)';
        present := 'c.embedding IS NOT NULL';
    ELSE
        relation := format('%s v JOIN @s.chunks c ON c.id = v.chunk_id '
                           'AND c.content_version = v.content_version',
                           @s.model_vectors(m.id));
        distance := CASE WHEN m.halfvec
                         THEN '(v.embedding OPERATOR(@v.<=>) $1::@v.halfvec)'
                         ELSE '(v.embedding OPERATOR(@v.<=>) $1)' END;
        present := 'true';
    END IF;
END
$$;

-- Whether the calling role may read a chunk (chunks' row-level security decides): the
-- policy of every model's vectors.  A function, asked row by row for the rows a search
-- reads: as a subquery in the policy, the planner may read (and check) all of chunks.
CREATE FUNCTION @s.chunk_visible(chunk bigint) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM @s.chunks c WHERE c.id = chunk);
END
$$;

-- Register a model (the daemon's owner: indexer models add).  Its vectors get a table
-- and an HNSW index, readable by the roles that may read chunks (under chunks' rules:
-- a role sees the vectors of the chunks it may read).  Returns the model's id.
CREATE FUNCTION @s.add_model(name text, dimension integer, record jsonb, fingerprint text,
                             halfvec boolean DEFAULT false,
                             lock_wait interval DEFAULT '200ms') RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id integer;
    same text;
    tbl text;
    grantee regrole;
BEGIN
    -- The foreign key to chunks takes a lock on it that the application's writes queue
    -- behind: wait at most lock_wait for it (lock_not_available: the caller tries again).
    PERFORM set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::bigint::text,
                       true);
    SELECT m.name INTO same FROM @s.models m
    WHERE m.fingerprint = add_model.fingerprint AND m.halfvec = add_model.halfvec;
    IF FOUND THEN
        RAISE EXCEPTION 'this model is already registered, as %', same
            USING ERRCODE = 'unique_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM @s.models m WHERE m.name = add_model.name) THEN
        RAISE EXCEPTION 'a model named % is already registered', add_model.name
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO @s.models (name, dimension, halfvec, storage, record, fingerprint)
    VALUES (add_model.name, add_model.dimension, add_model.halfvec, 'table',
            add_model.record, add_model.fingerprint)
    RETURNING id INTO new_id;
    tbl := @s.model_vectors(new_id);
    EXECUTE format(
        'CREATE TABLE %s ('
        '  chunk_id bigint PRIMARY KEY REFERENCES @s.chunks (id) ON DELETE CASCADE,'
        '  content_version integer NOT NULL,'
        '  content_hash bytea,'
        '  embedding @v.%s(%s) NOT NULL,'
        '  embedded_at timestamptz NOT NULL DEFAULT now())',
        tbl, CASE WHEN add_model.halfvec THEN 'halfvec' ELSE 'vector' END,
        add_model.dimension);
    EXECUTE format('COMMENT ON TABLE %s IS %L', tbl,
                   format('Vectors of model %s (see models)', add_model.name));
    EXECUTE format('CREATE INDEX %I ON %s USING hnsw (embedding @v.%s) '
                   'WITH (m = 16, ef_construction = 64)',
                   'model_' || new_id || '_vectors_embedding_idx', tbl,
                   CASE WHEN add_model.halfvec THEN 'halfvec_cosine_ops'
                        ELSE 'vector_cosine_ops' END);
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('CREATE POLICY model_vectors_read ON %s FOR SELECT '
                   'USING (@s.chunk_visible(chunk_id))', tbl);
    FOR grantee IN
        SELECT DISTINCT a.grantee::regrole
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        WHERE c.oid = '@s.chunks'::regclass AND a.grantee <> c.relowner AND a.grantee <> 0
          AND a.privilege_type = 'SELECT'
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO %s', tbl, grantee);
    END LOOP;
    PERFORM pg_notify('indexer_chunks', @schema_literal);  -- the daemons start its fill
    RETURN new_id;
END
$$;

-- Fill in the record and fingerprint of a model the upgrade registered (a daemon that
-- runs it, at start), and its name when no chunk has a vector yet.
CREATE FUNCTION @s.adopt_model(model_id integer, name text, record jsonb, fingerprint text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE @s.models m
    SET name = adopt_model.name, record = adopt_model.record,
        fingerprint = adopt_model.fingerprint
    WHERE m.id = adopt_model.model_id AND m.fingerprint IS NULL;
END
$$;

-- How many embedded chunks lack a vector of the model.
CREATE FUNCTION @s.model_missing(model_id integer) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m @s.models;
    missing bigint;
BEGIN
    SELECT * INTO m FROM @s.models x WHERE x.id = model_id;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF m.storage = 'column' THEN
        SELECT count(*) INTO missing FROM @s.chunks c
        WHERE c.state = 'embedded' AND c.embedding IS NULL;
    ELSE
        EXECUTE format('SELECT count(*) FROM @s.chunks c WHERE c.state = ''embedded'' '
                       'AND NOT EXISTS (SELECT 1 FROM %s v WHERE v.chunk_id = c.id '
                       'AND v.content_version = c.content_version)', @s.model_vectors(m.id))
            INTO missing;
    END IF;
    RETURN missing;
END
$$;

-- Make a model the active one, in one transaction: search serves it from the commit
-- on.  Refused while embedded chunks lack its vector, unless forced (they are then
-- missing from its answers until the daemon has embedded them).  Returns how many
-- were missing.  The daemons are woken, and embed new text with it first.
CREATE FUNCTION @s.activate_model(name text, force boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target @s.models;
    missing bigint;
    embedded bigint;
BEGIN
    -- One activation at a time; writers of vectors are not held up.
    LOCK TABLE @s.models IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO target FROM @s.models m WHERE m.name = activate_model.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no model named %', activate_model.name
            USING ERRCODE = 'undefined_object';
    END IF;
    IF target.active THEN
        RETURN 0;
    END IF;
    missing := @s.model_missing(target.id);
    IF missing > 0 AND NOT coalesce(force, false) THEN
        SELECT count(*) INTO embedded FROM @s.chunks c WHERE c.state = 'embedded';
        RAISE EXCEPTION 'model % lacks vectors for % of % embedded chunks: wait for the '
            'daemon to embed them (indexer models list shows progress), or force the '
            'switch', target.name, missing, embedded
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE @s.models m SET active = false WHERE m.active;
    UPDATE @s.models m SET active = true, activated_at = now() WHERE m.id = target.id;
    PERFORM pg_notify('indexer_chunks', @schema_literal);  -- wakes the daemons
    RETURN missing;
END
$$;

-- Drop a model that is not active: its table (or, for the model kept in
-- chunks.embedding, that column's vectors) and its queued work.
CREATE FUNCTION @s.drop_model(name text, lock_wait interval DEFAULT '200ms') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target @s.models;
BEGIN
    LOCK TABLE @s.models IN SHARE ROW EXCLUSIVE MODE;
    -- Dropping the table drops its foreign key's triggers on chunks, which takes a lock
    -- that searches and writes queue behind: wait at most lock_wait for it.
    PERFORM set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::bigint::text,
                       true);
    SELECT * INTO target FROM @s.models m WHERE m.name = drop_model.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no model named %', drop_model.name USING ERRCODE = 'undefined_object';
    ELSIF target.active THEN
        RAISE EXCEPTION 'model % is active: activate another one first', target.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The row first: a writer of its vectors holds it (store_model_vectors) until its
    -- transaction ends, and one that comes after finds no model, and writes nothing.
    DELETE FROM @s.models m WHERE m.id = target.id;
    IF target.storage = 'column' THEN
        UPDATE @s.chunks c SET embedding = NULL WHERE c.embedding IS NOT NULL;
    ELSE
        EXECUTE format('DROP TABLE %s', @s.model_vectors(target.id));
    END IF;
    PERFORM pg_notify('indexer_chunks', @schema_literal);
END
$$;

-- Queue, for a model, the next range of chunks that were embedded before it could
-- reach them (the chunks from fill_after on that lack its vector), while less than a
-- range of its work is queued.  One caller at a time per model (the others skip it).
-- Returns how many chunk ids the range spanned: 0 when it reached the last chunk, or
-- queued nothing since enough is queued already.
CREATE FUNCTION @s.fill_model(model_id integer, batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m @s.models;
    last_id bigint;
    spanned integer;
BEGIN
    SELECT * INTO m FROM @s.models x WHERE x.id = model_id FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF (SELECT count(*) FROM (SELECT 1 FROM @s.model_pending p
                              WHERE p.model_id = m.id AND NOT p.failed LIMIT batch) q)
       >= batch THEN
        RETURN 0;  -- enough is queued; come back once it is done
    END IF;
    SELECT max(r.id), count(*) INTO last_id, spanned
    FROM (SELECT c.id FROM @s.chunks c WHERE c.id > m.fill_after ORDER BY c.id LIMIT batch) r;
    IF spanned = 0 THEN
        RETURN 0;
    END IF;
    IF m.storage = 'column' THEN
        INSERT INTO @s.model_pending (model_id, chunk_id, fresh)
        SELECT m.id, c.id, false FROM @s.chunks c
        WHERE c.id > m.fill_after AND c.id <= last_id AND c.state = 'embedded'
          AND c.embedding IS NULL
        ON CONFLICT DO NOTHING;
    ELSE
        EXECUTE format(
            'INSERT INTO @s.model_pending (model_id, chunk_id, fresh) '
            'SELECT $1, c.id, false FROM @s.chunks c '
            'WHERE c.id > $2 AND c.id <= $3 AND c.state = ''embedded'' '
            '  AND NOT EXISTS (SELECT 1 FROM %s v WHERE v.chunk_id = c.id '
            '                  AND v.content_version = c.content_version) '
            'ON CONFLICT DO NOTHING', @s.model_vectors(m.id))
            USING m.id, m.fill_after, last_id;
    END IF;
    UPDATE @s.models x SET fill_after = last_id WHERE x.id = m.id;
    RETURN spanned;
END
$$;

-- Write vectors of a model for chunks whose text is still the one they were computed
-- from (its version, and the sha256 of its first max_chars characters, or all of it
-- when NULL: a row deleted and inserted again under its id starts at version 1 again):
-- into chunks.embedding or the model's table.  Returns the chunks written.
CREATE FUNCTION @s.store_model_vectors(model_id integer, ids bigint[], versions integer[],
                                       embeddings @v.vector[], hashes bytea[],
                                       max_chars integer)
RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m @s.models;
    written bigint[];
BEGIN
    -- Held until the transaction ends: the model cannot be dropped meanwhile.
    SELECT * INTO m FROM @s.models x WHERE x.id = model_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN '{}';
    ELSIF m.storage = 'column' THEN
        WITH input AS (
            SELECT * FROM unnest(ids, versions, embeddings, hashes)
                AS t(id, content_version, embedding, hash)
        ), done AS (
            UPDATE @s.chunks c
            SET embedding = input.embedding, embedding_model = m.name
            FROM input
            WHERE c.id = input.id AND c.content_version = input.content_version
              AND sha256(convert_to(CASE WHEN max_chars IS NULL THEN c.content
                                         ELSE left(c.content, max_chars) END, 'UTF8'))
                  = input.hash
            RETURNING c.id
        )
        SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO written FROM done;
    ELSE
        EXECUTE format(
            'WITH input AS ('
            '    SELECT * FROM unnest($1, $2, $3, $4) AS t(id, content_version, embedding, hash)'
            '), done AS ('
            '    INSERT INTO %s AS v (chunk_id, content_version, content_hash, embedding)'
            '    SELECT input.id, input.content_version, input.hash, input.embedding'
            '    FROM input JOIN @s.chunks c'
            '      ON c.id = input.id AND c.content_version = input.content_version'
            '     AND sha256(convert_to(CASE WHEN $5 IS NULL THEN c.content'
            '                                ELSE left(c.content, $5) END, ''UTF8'')) = input.hash'
            '    ORDER BY input.id'
            '    ON CONFLICT (chunk_id) DO UPDATE'
            '    SET content_version = excluded.content_version,'
            '        content_hash = excluded.content_hash, embedding = excluded.embedding,'
            '        embedded_at = now()'
            '    RETURNING v.chunk_id'
            ') SELECT coalesce(array_agg(chunk_id ORDER BY chunk_id), ''{}'') FROM done',
            @s.model_vectors(m.id))
            INTO written USING ids, versions, embeddings, hashes, max_chars;
    END IF;
    RETURN written;
END
$$;
"""

SEARCH = r"""
DROP FUNCTION @s.search_chunks(@v.vector, integer, jsonb);
DROP FUNCTION @s.similar_chunks(bigint, integer);
DROP FUNCTION @s.search_documents(@v.vector, integer, jsonb, text, integer);

-- Nearest rows (not passages) to a query vector among those whose metadata contains
-- filter, by the named model (default: the active one); as in migration 0006, k rows
-- whenever k rows match, on pgvector 0.7 too.
CREATE FUNCTION @s.search_chunks(query @v.vector, k integer DEFAULT 10,
                                 filter jsonb DEFAULT '{}', model text DEFAULT NULL)
RETURNS TABLE (id bigint, score double precision, content text, metadata jsonb)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off SET enable_sort = off AS $$
#variable_conflict use_column
DECLARE
    wanted integer := greatest(coalesce(k, 10), 0);
    wanted_filter jsonb := coalesce(search_chunks.filter, '{}');
    width integer;
    matched integer;
    src record;
BEGIN
    IF wanted = 0 THEN
        RETURN;
    END IF;
    src := @s.model_search(search_chunks.model, query);
    IF EXISTS (
        SELECT 1 FROM pg_extension
        WHERE extname = 'vector'
          AND string_to_array(split_part(extversion, '-', 1), '.')::int[] >= '{0,8}') THEN
        IF coalesce(current_setting('hnsw.iterative_scan', true), 'off') = 'off' THEN
            PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
        END IF;
    ELSIF wanted_filter <> '{}'::jsonb THEN
        width := greatest(wanted, coalesce(current_setting('hnsw.ef_search', true), '40')::integer);
        LOOP
            PERFORM set_config('hnsw.ef_search', least(width, 1000)::text, true);
            EXECUTE format(
                'SELECT count(*) FROM (SELECT 1 FROM %s WHERE %s AND c.document_id IS NULL '
                'AND c.metadata @> $2 ORDER BY %s LIMIT $3) n',
                src.relation, src.present, src.distance)
                INTO matched USING query, wanted_filter, wanted;
            EXIT WHEN matched >= wanted OR width >= 1000;
            width := width * 4;
        END LOOP;
        IF matched < wanted THEN
            RETURN QUERY EXECUTE format(
                'SELECT c.id, 1 - %2$s, c.content, c.metadata FROM %1$s '
                'WHERE %3$s AND c.document_id IS NULL AND c.metadata @> $2 '
                'ORDER BY %2$s + 0 LIMIT $3', src.relation, src.distance, src.present)
                USING query, wanted_filter, wanted;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT c.id, 1 - %2$s, c.content, c.metadata FROM %1$s '
        'WHERE %3$s AND c.document_id IS NULL AND c.metadata @> $2 '
        'ORDER BY %2$s LIMIT $3', src.relation, src.distance, src.present)
        USING query, wanted_filter, wanted;
END
$$;

-- The rows nearest to a row, by the named model's vectors (default: the active one).
CREATE FUNCTION @s.similar_chunks(chunk_id bigint, k integer DEFAULT 10,
                                  model text DEFAULT NULL)
RETURNS TABLE (id bigint, score double precision, content text, metadata jsonb)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off SET enable_sort = off AS $$
#variable_conflict use_column
DECLARE
    m record;
    query @v.vector;
BEGIN
    -- Only the columns a searching role may read (grant_search).
    IF similar_chunks.model IS NULL THEN
        SELECT x.id, x.name, x.storage INTO m FROM @s.models x WHERE x.active;
    ELSE
        SELECT x.id, x.name, x.storage INTO m FROM @s.models x
        WHERE x.name = similar_chunks.model;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no model named %', coalesce(similar_chunks.model, '(active)')
            USING ERRCODE = 'undefined_object';
    END IF;
    IF m.storage = 'column' THEN
        SELECT c.embedding INTO query FROM @s.chunks c WHERE c.id = similar_chunks.chunk_id;
    ELSE
        EXECUTE format('SELECT v.embedding::@v.vector FROM %s v JOIN @s.chunks c '
                       'ON c.id = v.chunk_id AND c.content_version = v.content_version '
                       'WHERE v.chunk_id = $1', @s.model_vectors(m.id))
            INTO query USING similar_chunks.chunk_id;
    END IF;
    IF query IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT s.id, s.score, s.content, s.metadata
    FROM @s.search_chunks(query, coalesce(k, 10) + 1, '{}', m.name) s
    WHERE s.id <> similar_chunks.chunk_id
    LIMIT coalesce(k, 10);
END
$$;

-- The k documents nearest to a query vector, by the named model (default: the active
-- one); otherwise as in migration 0006: chunks are read as the caller, under their
-- row-level security.
CREATE FUNCTION @s.search_documents(
    query @v.vector,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    source_name text DEFAULT NULL,
    max_passages integer DEFAULT 3,
    model text DEFAULT NULL
) RETURNS TABLE (source text, key text, score double precision, content text,
                 "position" integer, char_start integer, char_end integer, metadata jsonb,
                 passages jsonb)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off SET enable_sort = off AS $$
#variable_conflict use_column
DECLARE
    sid integer;
    wanted integer := greatest(coalesce(k, 10), 0);
    wanted_filter jsonb := coalesce(search_documents.filter, '{}');
    width integer;
    read_count integer;
    docs integer;
    iterative boolean;
    src record;
    -- How chunks are ordered: by the index's distance, or (exact) by one it cannot serve.
    distance text;
BEGIN
    IF wanted = 0 THEN
        RETURN;
    END IF;
    src := @s.model_search(search_documents.model, query);
    distance := src.distance;
    IF search_documents.source_name IS NOT NULL THEN
        SELECT s.id INTO sid FROM @s.sources s WHERE s.name = search_documents.source_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no source named %', search_documents.source_name
                USING ERRCODE = 'undefined_object';
        END IF;
    END IF;
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
        EXECUTE format(
            'SELECT count(*), count(DISTINCT n.document_id) '
            'FROM (SELECT c.document_id FROM %s '
            '      WHERE %s AND c.document_id IS NOT NULL '
            '        AND c.metadata @> $2 AND ($3::integer IS NULL OR c.source_id = $3) '
            '      ORDER BY %s LIMIT $4) n', src.relation, src.present, distance)
            INTO read_count, docs USING query, wanted_filter, sid, width;
        IF docs < wanted AND NOT iterative AND distance NOT LIKE '%+ 0' AND (
               read_count < width OR width >= 1000) THEN
            -- pgvector 0.7: the HNSW scan may have stopped at ef_search, not at the end.
            distance := distance || ' + 0';
            CONTINUE;
        END IF;
        EXIT WHEN docs >= wanted OR read_count < width OR width >= 100000;
        width := width * 4;
    END LOOP;
    RETURN QUERY EXECUTE format($q$
    WITH nearest AS (
        SELECT c.document_id, c.source_id, c.doc_key, c.content, c.position, c.char_start,
               c.char_end, c.metadata, 1 - %3$s AS score
        FROM %1$s
        WHERE %2$s AND c.document_id IS NOT NULL
          AND c.metadata @> $2 AND ($3::integer IS NULL OR c.source_id = $3)
        ORDER BY %4$s
        LIMIT $4
    ), ranked AS (
        SELECT n.*, row_number() OVER (PARTITION BY n.document_id
                                       ORDER BY n.score DESC, n.position) AS rank
        FROM nearest n
    ), best AS (
        SELECT r.* FROM ranked r WHERE r.rank = 1 ORDER BY r.score DESC LIMIT $5
    )
    SELECT s.name, b.doc_key, b.score, b.content, b.position, b.char_start, b.char_end,
           b.metadata,
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'content', r.content, 'score', r.score, 'position', r.position,
                       'char_start', r.char_start, 'char_end', r.char_end)
                   ORDER BY r.rank), '[]'::jsonb)
            FROM ranked r
            WHERE r.document_id = b.document_id
              AND r.rank <= $6)
    FROM best b
    JOIN @s.sources s ON s.id = b.source_id
    JOIN pg_class t ON t.oid = s.relation  -- a dropped table's passages are not found
    ORDER BY b.score DESC, b.document_id
    $q$, src.relation, src.present, src.distance, distance)
    USING query, wanted_filter, sid, width, wanted,
          greatest(coalesce(search_documents.max_passages, 3), 1);
END
$$;
"""

GRANTS = r"""
-- What a role needs to search: as in migration 0006, plus the models (not their
-- records) and every model's vectors (under chunks' rules).
CREATE OR REPLACE FUNCTION @s.grant_search(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m integer;
BEGIN
    PERFORM @s.grant_policy(role);
    EXECUTE format('GRANT SELECT ON %1$s.chunks, %1$s.alembic_version TO %2$s',
                   @schema_ident_literal, role);
    -- The models' records too: a search opens the model it names from its record.
    EXECUTE format('GRANT SELECT ON %1$s.models TO %2$s', @schema_ident_literal, role);
    FOR m IN SELECT x.id FROM @s.models x WHERE x.storage = 'table' LOOP
        EXECUTE format('GRANT SELECT ON %s TO %s', @s.model_vectors(m), role);
    END LOOP;
    EXECUTE format(
        'GRANT EXECUTE ON FUNCTION %1$s.search_chunks(%3$s.vector, integer, jsonb, text), '
        '%1$s.similar_chunks(bigint, integer, text), '
        '%1$s.search_documents(%3$s.vector, integer, jsonb, text, integer, text), '
        '%1$s.model_search(text, %3$s.vector), %1$s.model_vectors(integer), '
        '%1$s.chunk_visible(bigint) TO %2$s',
        @schema_ident_literal, role, @vector_ident_literal);
END
$$;

REVOKE ALL ON FUNCTION
    @s.model_vectors(integer),
    @s.model_search(text, @v.vector),
    @s.add_model(text, integer, jsonb, text, boolean, interval),
    @s.chunk_visible(bigint),
    @s.adopt_model(integer, text, jsonb, text),
    @s.model_missing(integer),
    @s.activate_model(text, boolean),
    @s.drop_model(text, interval),
    @s.fill_model(integer, integer),
    @s.store_model_vectors(integer, bigint[], integer[], @v.vector[], bytea[], integer),
    @s.search_chunks(@v.vector, integer, jsonb, text),
    @s.similar_chunks(bigint, integer, text),
    @s.search_documents(@v.vector, integer, jsonb, text, integer, text)
FROM PUBLIC;
"""

STATUS = r"""
-- Per model: whether it is active, how many embedded chunks have its vector and how
-- many lack it, its queued and parked work.  Counting is exact (one pass over chunks
-- per model).
CREATE VIEW @s.indexer_model_status AS
SELECT m.name AS model,
       m.active,
       m.dimension,
       CASE WHEN m.storage = 'column' THEN 'chunks.embedding'
            ELSE @s.model_vectors(m.id) END AS stored_in,
       m.halfvec,
       e.embedded AS chunks,
       e.embedded - @s.model_missing(m.id) AS covered,
       @s.model_missing(m.id) AS missing,
       coalesce(p.queued, 0) AS queued,
       coalesce(p.failed, 0) AS failed,
       p.last_error,
       round(coalesce(r.written, 0) / 60.0, 2) AS per_second,
       CASE WHEN @s.model_missing(m.id) = 0 THEN interval '0'
            WHEN coalesce(r.written, 0) > 0
            THEN make_interval(secs => @s.model_missing(m.id) * 60.0 / r.written)
       END AS eta,
       m.fingerprint,
       m.created_at,
       m.activated_at
FROM @s.models m
CROSS JOIN (SELECT count(*) AS embedded FROM @s.chunks c WHERE c.state = 'embedded') e
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE NOT q.failed) AS queued,
           count(*) FILTER (WHERE q.failed) AS failed,
           min(q.last_error) FILTER (WHERE q.failed) AS last_error
    FROM @s.model_pending q WHERE q.model_id = m.id
) p ON true
LEFT JOIN LATERAL (
    -- Vectors its background work wrote in the last minute.
    SELECT sum(e.row_count) AS written
    FROM @s.events e
    WHERE e.kind = 'model_batch' AND e.at > now() - interval '1 minute'
      AND e.detail ->> 'model' = m.name
) r ON true;
"""

DOWNGRADE = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @s.models WHERE active AND storage = 'column') THEN
        RAISE EXCEPTION 'the active model does not keep its vectors in chunks.embedding: '
            'activate the model registered by this migration (storage column) first'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END
$$;
DO $$
DECLARE
    m integer;
BEGIN
    FOR m IN SELECT id FROM @s.models WHERE storage = 'table' LOOP
        EXECUTE format('DROP TABLE %s', @s.model_vectors(m));
    END LOOP;
END
$$;
DROP VIEW @s.indexer_model_status;
DROP FUNCTION @s.search_chunks(@v.vector, integer, jsonb, text);
DROP FUNCTION @s.similar_chunks(bigint, integer, text);
DROP FUNCTION @s.search_documents(@v.vector, integer, jsonb, text, integer, text);
DROP FUNCTION @s.store_model_vectors(integer, bigint[], integer[], @v.vector[], bytea[],
                                     integer);
DROP FUNCTION @s.fill_model(integer, integer);
DROP FUNCTION @s.drop_model(text, interval);
DROP FUNCTION @s.activate_model(text, boolean);
DROP FUNCTION @s.model_missing(integer);
DROP FUNCTION @s.adopt_model(integer, text, jsonb, text);
DROP FUNCTION @s.add_model(text, integer, jsonb, text, boolean, interval);
DROP FUNCTION @s.model_search(text, @v.vector);
DROP FUNCTION @s.model_vectors(integer);
DROP FUNCTION @s.chunk_visible(bigint);
DROP TABLE @s.model_pending;
DROP TABLE @s.models;
DROP TABLE @s.chunking;
DELETE FROM @s.events WHERE kind = 'model_batch';
ALTER TABLE @s.events DROP CONSTRAINT events_kind_check;
ALTER TABLE @s.events ADD CONSTRAINT events_kind_check CHECK (kind IN (
    'worker_started', 'worker_stopped', 'batch_completed', 'batch_failed'));
DO $$
DECLARE
    dims integer := (SELECT a.atttypmod FROM pg_attribute a
                     WHERE a.attrelid = '@s.chunks'::regclass AND a.attname = 'embedding');
BEGIN
    DELETE FROM @s.vector_cache WHERE @v.vector_dims(embedding) <> dims;
    EXECUTE format('ALTER TABLE @s.vector_cache ALTER COLUMN embedding TYPE @v.vector(%s)', dims);
END
$$;
"""


def _migration(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"indexer_migration_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _of_0006(pattern: str) -> str:
    match = re.search(pattern, _migration("0006_privileges").UPGRADE, re.DOTALL)
    assert match is not None, pattern
    return match.group(0)


def _search_of_0006() -> str:
    """0006's search functions and grant_search, as they were (the downgrade)."""
    parts = [
        _of_0006(rf"CREATE OR REPLACE FUNCTION @s\.{name}\(.*?\n\$\$;\n")
        for name in ("search_chunks", "similar_chunks", "search_documents")
    ]
    grant = _of_0006(r"CREATE FUNCTION @s\.grant_search\(.*?\n\$\$;\n")
    parts.append(grant.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    return "".join(parts)


# The roles that could execute 0006's search functions (the grants go with a DROP).
_KEEP_GRANTS = r"""
CREATE TEMPORARY TABLE indexer_search_grantees ON COMMIT DROP AS
SELECT DISTINCT a.grantee::regrole AS grantee
FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
WHERE p.oid IN ('@s.search_chunks(@v.vector, integer, jsonb)'::regprocedure,
                '@s.search_documents(@v.vector, integer, jsonb, text, integer)'::regprocedure)
  AND a.grantee <> p.proowner AND a.grantee <> 0;
"""

# What they could execute, they still can: the new signatures (and, for them to work,
# the models' registry), nothing more.
_REGRANT = r"""
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN SELECT g.grantee FROM indexer_search_grantees g LOOP
        EXECUTE format(
            'GRANT EXECUTE ON FUNCTION @s.search_chunks(@v.vector, integer, jsonb, text), '
            '@s.similar_chunks(bigint, integer, text), '
            '@s.search_documents(@v.vector, integer, jsonb, text, integer, text), '
            '@s.model_search(text, @v.vector), @s.model_vectors(integer), '
            '@s.chunk_visible(bigint) TO %s', grantee);
        EXECUTE format('GRANT SELECT ON @s.models TO %s', grantee);
    END LOOP;
END
$$;
"""

_REGRANT_0006 = r"""
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN SELECT g.grantee FROM indexer_search_grantees g LOOP
        EXECUTE format(
            'GRANT EXECUTE ON FUNCTION @s.search_chunks(@v.vector, integer, jsonb), '
            '@s.similar_chunks(bigint, integer), '
            '@s.search_documents(@v.vector, integer, jsonb, text, integer) TO %s', grantee);
    END LOOP;
END
$$;
"""


def _run(script: str) -> None:
    # 0006's placeholder substitution (schema and pgvector's schema, quoted).
    _migration("0006_privileges")._run(script)


def upgrade() -> None:
    _run(UPGRADE + _KEEP_GRANTS + SEARCH + GRANTS + _REGRANT + STATUS)


def downgrade() -> None:
    chunks_trigger = re.search(
        r"CREATE OR REPLACE FUNCTION chunks_before_write\(\).*?\n\$\$;\n",
        _migration("0004_vector_cache").UPGRADE,
        re.DOTALL,
    )
    assert chunks_trigger is not None
    trigger = chunks_trigger.group(0).replace("chunks_before_write", "@s.chunks_before_write", 1)
    trigger = trigger.replace(
        "LANGUAGE plpgsql AS", "LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS", 1
    )
    keep_grants = _KEEP_GRANTS.replace(
        "@s.search_chunks(@v.vector, integer, jsonb)",
        "@s.search_chunks(@v.vector, integer, jsonb, text)",
    ).replace(
        "@s.search_documents(@v.vector, integer, jsonb, text, integer)",
        "@s.search_documents(@v.vector, integer, jsonb, text, integer, text)",
    )
    _run(
        keep_grants
        + DOWNGRADE
        + _search_of_0006()
        + trigger
        + "REVOKE ALL ON FUNCTION @s.search_chunks(@v.vector, integer, jsonb), "
        "@s.similar_chunks(bigint, integer), "
        "@s.search_documents(@v.vector, integer, jsonb, text, integer) FROM PUBLIC;\n"
        + _REGRANT_0006
    )
