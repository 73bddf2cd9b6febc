"""Privileges: every function acts on its own schema, runs no other role's code with
the indexer's rights, and search shows each role only what it may read

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Every function of the indexer is re-created with ``search_path = pg_catalog, pg_temp``
and every object it uses named with its schema (this migration's schema, and the
schema pgvector lives in): whatever the caller's search_path, ``ix.search_chunks()``
reads ``ix.chunks``, and no object another role creates in a schema on the path can
stand in for a built-in one.  EXECUTE is revoked from PUBLIC on all of them: the role
that ran the migration (their owner) may run them all, and ``grant_search(role)`` /
``grant_write(role)`` grant what searching and writing roles need.

source_changed (the triggers' function, SECURITY DEFINER)
    Acts only for the table of the source its argument names (``TG_RELID`` must be
    that source's relation), only as an AFTER ... FOR EACH STATEMENT trigger, and only
    when the key column's type is built in: a trigger another role attaches to a table
    of its own does nothing, and no cast, operator or function of the table owner's
    types runs with the definer's rights (watched columns are compared through their
    types' output functions, which only a superuser can write).  The upgrade drops the
    triggers on this function that are not a registered source's.

sources.relation
    The source's table as a ``regclass``: it follows a rename, and pg_dump writes it as
    a name, so a restore points it at the restored table.

chunks: row-level security
    Passages of sources are visible to a role only where that role may read the
    source's row: SELECT on the key and text columns of the source's table, and, where
    row-level security applies to the role, the row passing the table's policies (the
    key is looked up in the table as that role).  Rows inserted straight into chunks
    (``document_id`` NULL) are visible as before.  The table's owner (the role the
    daemon runs as) is not subject to it.  A role may insert, update and delete only
    rows, never passages.

Reading a source's table (source_texts, backfill_source)
    With ``row_security = off``: a table whose policies would apply to the reading role
    is refused (one line) instead of running its owner's policy code with the indexer's
    rights.  Text columns of a type that is not built in are read through the type's
    output function (no cast), and so are metadata columns (as strings).

search_chunks, similar_chunks
    Rows only: passages are found with search_documents.
"""

import importlib.util
import re
from pathlib import Path
from typing import Any

from alembic import op
from psycopg import sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# @s: the indexer's schema, @v: the schema pgvector is installed in (quoted identifiers).
UPGRADE = r"""
ALTER TABLE @s.sources ADD COLUMN relation regclass;
COMMENT ON COLUMN @s.sources.relation IS
    'The source''s table (follows a rename; NULL if it was gone at the upgrade)';
UPDATE @s.sources SET relation = to_regclass(format('%I.%I', table_schema, table_name));
ALTER TABLE @s.sources
    ADD COLUMN key_attnum smallint,
    ADD COLUMN text_attnums smallint[],
    ADD COLUMN metadata_attnums smallint[],
    ADD COLUMN metadata_json_attnum smallint;
COMMENT ON COLUMN @s.sources.key_attnum IS
    'The key column by number: a column renamed is followed (the names above are as '
    'registered)';
UPDATE @s.sources s
SET key_attnum = (SELECT a.attnum FROM pg_attribute a
                  WHERE a.attrelid = s.relation AND a.attname = s.key_column),
    text_attnums = ARRAY(SELECT a.attnum
                         FROM unnest(s.text_columns) WITH ORDINALITY AS n(col, ord)
                         JOIN pg_attribute a ON a.attrelid = s.relation AND a.attname = n.col
                         ORDER BY n.ord),
    metadata_attnums = ARRAY(SELECT a.attnum
                             FROM unnest(s.metadata_columns) WITH ORDINALITY AS n(col, ord)
                             JOIN pg_attribute a ON a.attrelid = s.relation
                                                AND a.attname = n.col
                             ORDER BY n.ord),
    metadata_json_attnum = (SELECT a.attnum FROM pg_attribute a
                            WHERE a.attrelid = s.relation AND a.attname = s.metadata_json)
WHERE s.relation IS NOT NULL;

-- A source's row with its columns' names (and the key's type) as they are now in its
-- table, found by number: a column renamed or retyped since registration is followed, a
-- column dropped is left out (the key: NULL).
CREATE FUNCTION @s.current_names(src @s.sources) RETURNS @s.sources
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF src.key_attnum IS NULL THEN
        RETURN src;
    END IF;
    SELECT a.attname, format_type(a.atttypid, NULL) INTO src.key_column, src.key_type
    FROM pg_attribute a
    WHERE a.attrelid = src.relation AND a.attnum = src.key_attnum AND NOT a.attisdropped;
    IF NOT FOUND THEN
        src.key_column := NULL;
    END IF;
    src.text_columns := ARRAY(
        SELECT a.attname::text
        FROM unnest(src.text_attnums) WITH ORDINALITY AS n(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = src.relation AND a.attnum = n.attnum
                           AND NOT a.attisdropped
        ORDER BY n.ord);
    src.metadata_columns := ARRAY(
        SELECT a.attname::text
        FROM unnest(src.metadata_attnums) WITH ORDINALITY AS n(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = src.relation AND a.attnum = n.attnum
                           AND NOT a.attisdropped
        ORDER BY n.ord);
    src.metadata_json := (SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = src.relation
                            AND a.attnum = src.metadata_json_attnum AND NOT a.attisdropped);
    RETURN src;
END
$$;

-- Queue documents by key (see migration 0005).  Only source_changed and
-- backfill_source call it.
CREATE OR REPLACE FUNCTION @s.queue_documents(source integer, keys text[],
                                               requeue boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    queued bigint;
BEGIN
    IF keys IS NULL OR cardinality(keys) = 0 THEN
        RETURN 0;
    END IF;
    IF requeue THEN
        INSERT INTO @s.source_documents AS d (source_id, doc_key)
        SELECT DISTINCT source, k FROM unnest(keys) AS k ORDER BY k
        ON CONFLICT (source_id, doc_key) DO UPDATE
        SET version = d.version + 1, state = 'pending', attempts = 0, last_error = NULL,
            retry_at = NULL, claimed_by = NULL, lease_expires_at = NULL, queued_at = now();
    ELSE
        INSERT INTO @s.source_documents (source_id, doc_key)
        SELECT DISTINCT source, k FROM unnest(keys) AS k ORDER BY k
        ON CONFLICT (source_id, doc_key) DO NOTHING;
    END IF;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM pg_notify('indexer_chunks', @schema_literal);
    END IF;
    RETURN queued;
END
$$;

-- The triggers on a source table.  SECURITY DEFINER, so the application's role needs
-- no right on the indexer's tables; and therefore it trusts nothing it is given: the
-- table must be its source's, the key's type built in (its cast to text and its
-- equality are then pg_catalog's), and watched columns are compared as the text their
-- types' output functions write (format() calls no cast).
CREATE OR REPLACE FUNCTION @s.source_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src @s.sources;
    key_type oid;
    keys text[];
    gone text[];
    watched text;
BEGIN
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'STATEMENT' OR TG_NARGS <> 1 THEN
        RETURN NULL;
    END IF;
    SELECT * INTO src FROM @s.sources s WHERE s.id::text = TG_ARGV[0];
    IF NOT FOUND OR src.relation IS DISTINCT FROM TG_RELID THEN
        RETURN NULL;  -- not this source's table: a trigger left behind, or not ours
    END IF;
    IF TG_OP = 'TRUNCATE' THEN  -- reads no column: whatever its key has become
        DELETE FROM @s.source_documents WHERE source_id = src.id;
        RETURN NULL;
    END IF;
    src := @s.current_names(src);
    IF src.key_column IS NULL THEN
        RAISE WARNING 'indexer: source % is not followed: its key column is gone', src.name;
        RETURN NULL;
    END IF;
    SELECT a.atttypid INTO key_type FROM pg_attribute a
    WHERE a.attrelid = TG_RELID AND a.attname = src.key_column AND a.attnum > 0
      AND NOT a.attisdropped;
    IF key_type IS NULL OR key_type >= 16384 THEN
        RAISE WARNING 'indexer: source % is not followed: its key column % is gone or of a '
                      'type that is not built in', src.name, quote_ident(src.key_column);
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT array_agg(o.%I::text) FROM old_rows o', src.key_column)
            INTO gone;
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('SELECT array_agg(n.%I::text) FROM new_rows n', src.key_column)
            INTO keys;
    ELSE
        SELECT string_agg(format('format(%L, o.%I) IS DISTINCT FROM format(%L, n.%I)',
                                 '%L', c, '%L', c), ' OR ')
        INTO watched
        FROM unnest(src.text_columns || src.metadata_columns
                    || array_remove(ARRAY[src.metadata_json], NULL)) AS c;
        EXECUTE format(
            'SELECT array_agg(n.%1$I::text) FROM new_rows n LEFT JOIN old_rows o '
            'ON o.%1$I = n.%1$I WHERE o.%1$I IS NULL OR %2$s', src.key_column,
            coalesce(watched, 'false'))  -- every watched column dropped: only new keys
            INTO keys;
        EXECUTE format(
            'SELECT array_agg(o.%1$I::text) FROM old_rows o LEFT JOIN new_rows n '
            'ON n.%1$I = o.%1$I WHERE n.%1$I IS NULL', src.key_column)
            INTO gone;
    END IF;
    IF gone IS NOT NULL THEN
        -- See migration 0005: wait for a back-fill that queued these keys, then delete.
        INSERT INTO @s.source_documents (source_id, doc_key)
        SELECT DISTINCT src.id, k FROM unnest(gone) AS k ORDER BY k
        ON CONFLICT (source_id, doc_key) DO NOTHING;
        DELETE FROM @s.source_documents WHERE source_id = src.id AND doc_key = ANY(gone);
    END IF;
    PERFORM @s.queue_documents(src.id, keys);
    RETURN NULL;
END
$$;

-- Triggers on this function that are not a registered source's (attached by a role to
-- a table of its own): drop those this role may drop; the function ignores the rest.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgname, tg.tgrelid
        FROM pg_trigger tg
        WHERE tg.tgfoid = '@s.source_changed()'::regprocedure
          AND NOT EXISTS (
              SELECT 1 FROM @s.sources s
              WHERE s.relation = tg.tgrelid
                AND s.id::text = split_part(encode(tg.tgargs, 'escape'), '\000', 1))
    LOOP
        BEGIN
            EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tgrelid::regclass);
            RAISE NOTICE 'dropped trigger % on %: it is not a source''s', t.tgname,
                t.tgrelid::regclass;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trigger % on % is not a source''s and could not be dropped (%); '
                          'it does nothing', t.tgname, t.tgrelid::regclass, SQLERRM;
        END;
    END LOOP;
END
$$;

-- Register a table as a source (see migration 0005).  New here: the key must be of a
-- type whose text form does not depend on session settings; a temporary table, or one
-- whose row-level security applies to this role, is refused; the triggers are created
-- OR REPLACE (a removal by a role that could not drop them left them behind), and
-- taking the table's lock waits at most lock_wait (the application is never queued
-- behind a long wait: the caller retries).  The table is a regclass argument: its name
-- is found with the caller's search_path as the call reads it, before this function's
-- own path (pg_catalog only) applies.
DROP FUNCTION @s.add_source(text, text, text[], text[], text, text);
CREATE FUNCTION @s.add_source(
    source_table regclass,
    key_column text DEFAULT NULL,
    text_columns text[] DEFAULT NULL,
    metadata_columns text[] DEFAULT '{}',
    metadata_json text DEFAULT NULL,
    source_name text DEFAULT NULL,
    lock_wait interval DEFAULT '200ms'
) RETURNS @s.sources
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '200ms' AS $$
DECLARE
    rel regclass := source_table;
    kind "char";
    persistence "char";
    nsp text;
    relname text;
    key_att record;
    pk_columns text[];
    col text;
    src @s.sources;
    qualified text;
    op text;
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION 'no table given' USING ERRCODE = 'undefined_table';
    END IF;
    SELECT c.relkind, c.relpersistence, n.nspname, c.relname
    INTO kind, persistence, nsp, relname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel;
    qualified := format('%I.%I', nsp, relname);
    IF kind = 'p' THEN
        RAISE EXCEPTION '% is a partitioned table: statements on its partitions would not '
                        'reach the indexer''s triggers on it; add each partition as a source',
            qualified USING ERRCODE = 'wrong_object_type';
    ELSIF kind <> 'r' THEN
        RAISE EXCEPTION '% is not a table', qualified USING ERRCODE = 'wrong_object_type';
    END IF;
    IF persistence = 't' THEN
        RAISE EXCEPTION '% is a temporary table: the daemon cannot read it', qualified
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF EXISTS (SELECT 1 FROM @s.sources s WHERE s.relation = rel
               OR (s.table_schema = nsp AND s.table_name = relname)) THEN
        RAISE EXCEPTION '% is already a source', qualified USING ERRCODE = 'duplicate_object';
    END IF;
    IF nsp = @schema_literal AND relname IN ('chunks', 'events', 'sources', 'source_documents',
                                             'vector_cache', 'alembic_version') THEN
        RAISE EXCEPTION '% is the indexer''s own table, not a source', qualified
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM @s.sources s WHERE s.name = coalesce(source_name, qualified)) THEN
        RAISE EXCEPTION 'a source named % already exists', coalesce(source_name, qualified)
            USING ERRCODE = 'duplicate_object';
    END IF;
    IF NOT has_table_privilege(rel, 'SELECT') OR NOT has_table_privilege(rel, 'TRIGGER') THEN
        RAISE EXCEPTION 'role % may not read % or create triggers on it: GRANT SELECT, TRIGGER '
                        'ON % TO %', current_user, qualified, qualified, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF row_security_active(rel) THEN
        RAISE EXCEPTION 'row-level security on % applies to role %: the indexer does not run '
                        'a table''s policies with its rights, and they would hide rows from '
                        'it; make % the table''s owner, or ALTER ROLE % BYPASSRLS (each '
                        'searching role still sees only the rows the policies let it read)',
                        qualified, current_user, current_user, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO pk_columns
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = rel AND i.indisprimary;
    IF key_column IS NULL THEN
        IF pk_columns IS NULL THEN
            RAISE EXCEPTION '% has no primary key: give a unique, NOT NULL key column (--id, '
                            'or key_column in SQL)', qualified
                USING ERRCODE = 'invalid_table_definition';
        ELSIF cardinality(pk_columns) > 1 THEN
            RAISE EXCEPTION '% has a primary key of % columns: give one unique, NOT NULL key '
                            'column (--id, or key_column in SQL)', qualified,
                            cardinality(pk_columns)
                USING ERRCODE = 'invalid_table_definition';
        END IF;
        key_column := pk_columns[1];
    END IF;
    SELECT a.attnum, a.attnotnull, a.atttypid, format_type(a.atttypid, NULL) AS type
    INTO key_att
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = key_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% has no column %', qualified, quote_ident(key_column)
            USING ERRCODE = 'undefined_column';
    END IF;
    IF key_att.atttypid NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype,
                                'text'::regtype, 'character varying'::regtype,
                                'uuid'::regtype) THEN
        RAISE EXCEPTION 'key column % of % is of type %: a key must be smallint, integer, '
                        'bigint, text, varchar or uuid (types whose text form does not depend '
                        'on session settings)', quote_ident(key_column), qualified, key_att.type
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    IF NOT key_att.attnotnull OR NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
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
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                       WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0
                         AND NOT a.attisdropped) THEN
            RAISE EXCEPTION '% has no column %', qualified, quote_ident(col)
                USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;
    IF metadata_json IS NOT NULL AND (
        SELECT a.atttypid <> 'jsonb'::regtype FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = rel AND a.attname = metadata_json
    ) THEN
        RAISE EXCEPTION 'metadata column % of % is not jsonb', quote_ident(metadata_json), qualified
            USING ERRCODE = 'datatype_mismatch';
    END IF;

    INSERT INTO @s.sources (name, table_schema, table_name, key_column, key_type, text_columns,
                            metadata_columns, metadata_json, relation, key_attnum,
                            text_attnums, metadata_attnums, metadata_json_attnum)
    VALUES (coalesce(source_name, qualified), nsp, relname, key_column, key_att.type,
            text_columns, coalesce(metadata_columns, '{}'), metadata_json, rel, key_att.attnum,
            ARRAY(SELECT a.attnum FROM unnest(text_columns) WITH ORDINALITY AS n(col, ord)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = rel AND a.attname = n.col
                  ORDER BY n.ord),
            ARRAY(SELECT a.attnum
                  FROM unnest(coalesce(metadata_columns, '{}')) WITH ORDINALITY AS n(col, ord)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = rel AND a.attname = n.col
                  ORDER BY n.ord),
            (SELECT a.attnum FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rel AND a.attname = metadata_json))
    RETURNING * INTO src;

    -- Within this function only (its SET clause): at least 1 ms (0 would mean no limit).
    PERFORM set_config('lock_timeout',
                       greatest(ceil(extract(epoch FROM lock_wait) * 1000), 1)::bigint::text,
                       true);
    FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        EXECUTE format(
            'CREATE OR REPLACE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT '
            'EXECUTE FUNCTION %s.source_changed(%L)',
            'indexer_source_' || op, upper(op), qualified,
            CASE op WHEN 'insert' THEN 'NEW TABLE AS new_rows'
                    WHEN 'update' THEN 'OLD TABLE AS old_rows NEW TABLE AS new_rows'
                    ELSE 'OLD TABLE AS old_rows' END,
            @schema_ident_literal, src.id);
    END LOOP;
    EXECUTE format('CREATE OR REPLACE TRIGGER indexer_source_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s.source_changed(%L)',
                   qualified, @schema_ident_literal, src.id);
    PERFORM pg_notify('indexer_chunks', @schema_literal);
    RETURN src;
END
$$;

-- Stop following a source's table: drop its triggers where this role may (the table's
-- owner, or a member of its role), waiting at most lock_wait for the table's lock.
-- Returns NULL, or, when the triggers stay (another role owns the table), the line
-- that tells that role what to run: left behind, they do nothing (no source is theirs).
DROP FUNCTION @s.remove_source(text);
DROP FUNCTION @s.detach_source(text);
CREATE FUNCTION @s.detach_source(source_name text, lock_wait interval DEFAULT '200ms')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '200ms' AS $$
DECLARE
    src @s.sources;
    owner oid;
    op text;
BEGIN
    SELECT * INTO src FROM @s.sources s WHERE s.name = source_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no source named %', source_name USING ERRCODE = 'undefined_object';
    END IF;
    IF src.builtin THEN
        RAISE EXCEPTION 'documents is the built-in source: delete its rows instead'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT c.relowner INTO owner FROM pg_class c WHERE c.oid = src.relation;
    IF owner IS NULL THEN
        RETURN NULL;  -- the table is gone, and its triggers with it
    END IF;
    IF NOT pg_has_role(owner, 'USAGE') THEN
        RETURN format('the triggers on %s stay (only its owner, %s, may drop them; they do '
                      'nothing now): DROP TRIGGER indexer_source_insert ON %s; DROP TRIGGER '
                      'indexer_source_update ON %s; DROP TRIGGER indexer_source_delete ON %s; '
                      'DROP TRIGGER indexer_source_truncate ON %s;', src.relation,
                      owner::regrole, src.relation, src.relation, src.relation, src.relation);
    END IF;
    PERFORM set_config('lock_timeout',
                       greatest(ceil(extract(epoch FROM lock_wait) * 1000), 1)::bigint::text,
                       true);
    FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'indexer_source_' || op,
                       src.relation);
    END LOOP;
    RETURN NULL;
END
$$;

-- Unregister a source: detach it, then delete its documents and their chunks (see
-- migration 0005).  Returns the number of chunks deleted.
CREATE FUNCTION @s.remove_source(source_name text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src_id integer;
    removed bigint;
BEGIN
    SELECT s.id INTO src_id FROM @s.sources s WHERE s.name = source_name;
    -- Detached already (in a transaction of its own, as the CLI and API do): no second
    -- lock on the application's table.
    IF src_id IS NULL OR EXISTS (
        SELECT 1 FROM pg_trigger t JOIN @s.sources s ON s.relation = t.tgrelid
        WHERE s.id = src_id AND t.tgfoid = '@s.source_changed()'::regprocedure) THEN
        PERFORM @s.detach_source(source_name);
    END IF;
    DELETE FROM @s.sources WHERE id = src_id;
    SELECT coalesce(sum(chunk_count), 0) INTO removed
    FROM @s.source_documents WHERE source_id = src_id;
    DELETE FROM @s.source_documents WHERE source_id = src_id;  -- and their chunks (cascade)
    RETURN removed;
END
$$;

-- Why the indexer will not read a source's table now (NULL: it may): the table is
-- gone, or is no table, or its key is not of a built-in type, or its row-level security
-- applies to this role (whose policies would run with the indexer's rights).
CREATE FUNCTION @s.source_unreadable(src @s.sources) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind "char";
    key_type oid;
BEGIN
    SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = src.relation;
    IF kind IS NULL THEN
        RETURN format('the table %I.%I of source %s is gone', src.table_schema, src.table_name,
                      src.name);
    ELSIF kind NOT IN ('r', 'p') THEN
        RETURN format('%s is no longer a table', src.relation);
    END IF;
    IF src.key_column IS NULL THEN
        RETURN format('the key column of source %s is gone from %s', src.name, src.relation);
    END IF;
    SELECT a.atttypid INTO key_type FROM pg_attribute a
    WHERE a.attrelid = src.relation AND a.attname = src.key_column AND a.attnum > 0
      AND NOT a.attisdropped;
    IF key_type IS NULL THEN
        RETURN format('%s has no column %s (the key of source %s)', src.relation,
                      quote_ident(src.key_column), src.name);
    ELSIF key_type >= 16384 THEN
        RETURN format('the key column %s of %s is of a type that is not built in',
                      quote_ident(src.key_column), src.relation);
    END IF;
    IF row_security_active(src.relation) THEN
        RETURN format('row-level security on %s applies to role %s: the indexer does not run '
                      'a table''s policies with its rights; make %s the table''s owner, or '
                      'ALTER ROLE %s BYPASSRLS', src.relation, current_user, current_user,
                      current_user);
    END IF;
    RETURN NULL;
END
$$;

-- A column of a source's table as an SQL expression the indexer may evaluate with its
-- rights: a built-in type as itself (its casts and functions are pg_catalog's), another
-- type as the text its output function writes (format() calls no cast, and an output
-- function can only be written by a superuser).
CREATE FUNCTION @s.source_column(relation regclass, col text, as_text boolean) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN a.atttypid < 16384 AND as_text THEN format('t.%I::text', col)
                WHEN a.atttypid < 16384 THEN format('t.%I', col)
                ELSE format('format(%L, t.%I)', '%s', col) END
    FROM pg_attribute a
    WHERE a.attrelid = relation AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- Take a share lock on a source's table before its columns are looked at: no ALTER can
-- then change them until the transaction ends, and this function's statements, each
-- with a snapshot of its own (READ COMMITTED), see the columns the read will use.  Under
-- a snapshot older than the lock (REPEATABLE READ, SERIALIZABLE) a column changed just
-- before could be checked as it was and read as it is: refused.
CREATE FUNCTION @s.lock_source(src @s.sources) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'the indexer reads source tables in READ COMMITTED transactions only '
                        '(this one is %)', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = src.relation) THEN
        RAISE EXCEPTION 'the table %.% of source % is gone', quote_ident(src.table_schema),
            quote_ident(src.table_name), src.name USING ERRCODE = 'invalid_table_definition';
    END IF;
    EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', src.relation);
END
$$;

-- The next range of a source's existing rows (see migration 0005), read with
-- row_security off (a table whose policies apply to this role is refused, not read).
CREATE OR REPLACE FUNCTION @s.backfill_source(source integer, batch integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
DECLARE
    src @s.sources;
    keys text[];
    last_key text;
    n integer;
    why text;
BEGIN
    PERFORM set_config('lock_timeout', '200ms', true);
    SELECT * INTO src FROM @s.sources s
    WHERE s.id = source AND s.backfill_done_at IS NULL
    FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM @s.lock_source(src);
    src := @s.current_names(src);
    why := @s.source_unreadable(src);
    IF why IS NOT NULL THEN
        RAISE EXCEPTION '%', why USING ERRCODE = 'invalid_table_definition';
    END IF;
    EXECUTE format(
        'WITH b AS (SELECT t.%1$I AS k FROM %2$s t '
        '           WHERE $1::text IS NULL OR t.%1$I > $1::text::%3$s '
        '           ORDER BY t.%1$I LIMIT $2) '
        'SELECT array_agg(k::text), (SELECT k::text FROM b ORDER BY b.k DESC LIMIT 1) FROM b',
        src.key_column, src.relation, src.key_type)
        INTO keys, last_key USING src.backfill_after, batch;
    n := coalesce(cardinality(keys), 0);
    PERFORM @s.queue_documents(src.id, keys, false);
    IF n > 0 THEN
        EXECUTE format(
            'DELETE FROM %4$s.source_documents d WHERE d.source_id = $1 AND d.doc_key = ANY($2) '
            'AND NOT EXISTS (SELECT 1 FROM %2$s t WHERE t.%1$I = d.doc_key::%3$s)',
            src.key_column, src.relation, src.key_type, @schema_ident_literal)
            USING src.id, keys;
    END IF;
    UPDATE @s.sources
    SET backfill_after = coalesce(last_key, backfill_after),
        backfilled = backfilled + n,
        backfill_done_at = CASE WHEN n < batch THEN now() END
    WHERE id = src.id;
    RETURN n;
END
$$;

-- The text and metadata of a source's documents, by key (see migration 0005), read
-- with row_security off and no code of the table owner's types (source_column), waiting
-- at most 200 ms for the table's lock (a table held by a long ALTER or LOCK must not
-- stall the daemon: its documents wait, the others go on).
CREATE OR REPLACE FUNCTION @s.source_texts(source integer, keys text[], max_chars integer)
RETURNS TABLE (doc_key text, content text, metadata jsonb)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET row_security = off
    SET lock_timeout = '200ms' AS $$
DECLARE
    src @s.sources;
    text_expr text;
    meta_expr text;
    why text;
BEGIN
    SELECT * INTO src FROM @s.sources s WHERE s.id = source;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM @s.lock_source(src);
    src := @s.current_names(src);
    why := @s.source_unreadable(src);
    IF why IS NOT NULL THEN
        RAISE EXCEPTION '%', why USING ERRCODE = 'invalid_table_definition';
    END IF;
    SELECT string_agg(format('nullif(%s, %L)', coalesce(@s.source_column(src.relation, c, true),
                                                         format('t.%I', c)), ''), ', ')
    INTO text_expr
    FROM unnest(src.text_columns) AS c;
    SELECT 'jsonb_build_object('
           || coalesce(string_agg(format('%L, %s', c, coalesce(
                  @s.source_column(src.relation, c, false), format('t.%I', c))), ', '), '')
           || ')' INTO meta_expr
    FROM unnest(src.metadata_columns) AS c;
    IF src.metadata_json IS NOT NULL THEN
        meta_expr := format(
            '(CASE WHEN jsonb_typeof(t.%1$I) = %2$L THEN t.%1$I ELSE %3$L::jsonb END || %4$s)',
            src.metadata_json, 'object', '{}', meta_expr);
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT t.%1$I::text, left(concat_ws(E''\n\n'', %2$s), $2), %3$s '
        'FROM %4$s t WHERE t.%1$I = ANY($1::text[]::%5$s[])',
        src.key_column, text_expr, meta_expr, src.relation, src.key_type)
        USING keys, max_chars;
END
$$;

-- Whether the calling role may read these columns (by number) of a table: USAGE on its
-- schema and SELECT on each column; a column dropped since registration makes it false
-- (its text may still be in the passages until they are made again).
CREATE FUNCTION @s.columns_readable(relation regclass, attnums smallint[]) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((
        SELECT has_schema_privilege(c.relnamespace, 'USAGE') AND NOT EXISTS (
                   SELECT 1
                   FROM unnest(attnums) AS w(attnum)
                   LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = w.attnum
                                           AND NOT a.attisdropped
                   WHERE a.attnum IS NULL OR NOT has_column_privilege(c.oid, w.attnum, 'SELECT'))
        FROM pg_class c WHERE c.oid = relation), false)
$$;

-- The sources whose columns (key, text, metadata) a role may SELECT, split by whether
-- row-level security applies to it on their table: without (``under_rls`` false) their
-- passages are visible as they are; with, each is asked row by row (passage_visible).
-- Evaluated once per statement, for each half, by chunks' row-level security policy.
CREATE FUNCTION @s.readable_sources(under_rls boolean) RETURNS integer[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(s.id), '{}')
    FROM @s.sources s
    JOIN pg_class c ON c.oid = s.relation
    WHERE s.key_attnum IS NOT NULL
      AND @s.columns_readable(s.relation, array_remove(
              ARRAY[s.key_attnum] || s.text_attnums || s.metadata_attnums
              || ARRAY[s.metadata_json_attnum], NULL))
      AND row_security_active(c.oid) = under_rls
$$;

-- Whether the calling role may read the row a passage comes from: the key looked up in
-- the source's table as that role, so the table's grants and policies decide.  Called
-- by chunks' policy for the passages of readable_sources(true) only, which checked the
-- columns' grants; it checks the key column's again, so that a direct call is no less
-- careful.
CREATE FUNCTION @s.passage_visible(source integer, key text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel regclass;
    col name;
    typ text;
    seen boolean;
BEGIN
    SELECT s.relation, a.attname, format_type(a.atttypid, NULL) INTO rel, col, typ
    FROM @s.sources s
    JOIN pg_attribute a ON a.attrelid = s.relation AND a.attnum = s.key_attnum
                       AND NOT a.attisdropped AND a.atttypid < 16384
    WHERE s.id = source;
    IF NOT FOUND OR NOT has_column_privilege(rel, col, 'SELECT') OR NOT EXISTS (
           SELECT 1 FROM pg_class c
           WHERE c.oid = rel AND has_schema_privilege(c.relnamespace, 'USAGE')) THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s t WHERE t.%I = $1::%s)', rel, col, typ)
        INTO seen USING key;
    RETURN seen;
END
$$;

-- Per source, as in 0005, with the table's current name and whether it is still there
-- (a table dropped leaves its source, its documents and their passages: the passages are
-- no longer found, and `indexer sources remove` clears the rest).
CREATE OR REPLACE VIEW @s.indexer_source_status AS
SELECT s.name AS source,
       CASE WHEN t.oid IS NOT NULL THEN format('%I.%I', tn.nspname, t.relname)
            ELSE format('%I.%I', s.table_schema, s.table_name)
       END COLLATE "default" AS source_table,
       coalesce(d.documents, 0) AS documents,
       coalesce(d.indexed, 0) AS indexed,
       coalesce(d.pending, 0) AS pending,
       coalesce(d.in_flight, 0) AS in_flight,
       coalesce(d.failed, 0) AS failed,
       coalesce(d.truncated, 0) AS truncated,
       coalesce(d.chunks, 0) AS chunks,
       now() - d.oldest_queued_at AS lag,
       s.backfill_done_at IS NOT NULL AS backfilled,
       s.backfilled AS backfilled_rows,
       t.oid IS NOT NULL AS table_present
FROM @s.sources s
LEFT JOIN pg_class t ON t.oid = s.relation
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN LATERAL (
    SELECT count(*) AS documents,
           count(*) FILTER (WHERE state = 'indexed') AS indexed,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'claimed') AS in_flight,
           count(*) FILTER (WHERE state = 'failed') AS failed,
           count(*) FILTER (WHERE truncated) AS truncated,
           coalesce(sum(chunk_count) FILTER (WHERE state = 'indexed'), 0) AS chunks,
           min(queued_at) FILTER (WHERE state IN ('pending', 'claimed')) AS oldest_queued_at
    FROM @s.source_documents
    WHERE source_id = s.id
) d ON true;

-- Passages longer than the daemon now makes them (INDEXER_CHUNK_MAX_CHARS, 8,192 by
-- default: before, a text the tokenizer folds into few tokens made one chunk of any
-- length): their documents are queued again, to be cut anew.
UPDATE @s.source_documents d
SET version = d.version + 1, state = 'pending', attempts = 0, last_error = NULL,
    retry_at = NULL, claimed_by = NULL, lease_expires_at = NULL, queued_at = now()
WHERE d.id IN (SELECT c.document_id FROM @s.chunks c
               WHERE c.document_id IS NOT NULL AND length(c.content) > 8192);

-- Whether a document's passages are those of its current text (it is indexed, not queued
-- again since).  SECURITY DEFINER, reading only the indexer's own table: chunks' policy
-- asks it, as the searching role, before it asks a table's row-level security about a
-- row, which decides on the row as it is now, not as it was when its passages were made.
CREATE FUNCTION @s.document_current(document bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM @s.source_documents d
                   WHERE d.id = document AND d.state = 'indexed')
$$;

ALTER TABLE @s.chunks ENABLE ROW LEVEL SECURITY;
CREATE POLICY chunks_read ON @s.chunks FOR SELECT
    USING (document_id IS NULL
           OR source_id = ANY ((SELECT @s.readable_sources(false))::integer[])
           OR (source_id = ANY ((SELECT @s.readable_sources(true))::integer[])
               AND @s.document_current(document_id)
               AND @s.passage_visible(source_id, doc_key)));
CREATE POLICY chunks_insert_rows ON @s.chunks FOR INSERT WITH CHECK (document_id IS NULL);
CREATE POLICY chunks_update_rows ON @s.chunks FOR UPDATE
    USING (document_id IS NULL) WITH CHECK (document_id IS NULL);
CREATE POLICY chunks_delete_rows ON @s.chunks FOR DELETE USING (document_id IS NULL);

-- Nearest rows (not passages: search_documents finds those) to a query vector, among
-- rows whose metadata contains ``filter``.  pgvector 0.8+: the iterative index scan
-- keeps reading until k rows pass the filter (turned on for this transaction if the
-- session has it off).  pgvector 0.7 has none: one HNSW scan yields at most ef_search
-- rows and the filter is applied to those, so ef_search is widened (up to pgvector's
-- 1000, for this transaction), and if that still finds fewer than k, the rows are read
-- exactly, without the index (a distance the index cannot order by): k rows whenever
-- k rows match, on either version.
CREATE OR REPLACE FUNCTION @s.search_chunks(query @v.vector, k integer DEFAULT 10,
                                             filter jsonb DEFAULT '{}')
RETURNS TABLE (id bigint, score double precision, content text, metadata jsonb)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off SET enable_sort = off AS $$
#variable_conflict use_column
DECLARE
    wanted integer := greatest(coalesce(k, 10), 0);
    wanted_filter jsonb := coalesce(search_chunks.filter, '{}');
    width integer;
    matched integer;
BEGIN
    IF wanted = 0 THEN
        RETURN;
    END IF;
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
            SELECT count(*) INTO matched
            FROM (SELECT 1 FROM @s.chunks c
                  WHERE c.embedding IS NOT NULL AND c.document_id IS NULL
                    AND c.metadata @> wanted_filter
                  ORDER BY c.embedding OPERATOR(@v.<=>) query
                  LIMIT wanted) n;
            EXIT WHEN matched >= wanted OR width >= 1000;
            width := width * 4;
        END LOOP;
        IF matched < wanted THEN
            RETURN QUERY
            SELECT c.id, 1 - (c.embedding OPERATOR(@v.<=>) query), c.content, c.metadata
            FROM @s.chunks c
            WHERE c.embedding IS NOT NULL AND c.document_id IS NULL
              AND c.metadata @> wanted_filter
            ORDER BY (c.embedding OPERATOR(@v.<=>) query) + 0
            LIMIT wanted;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    SELECT c.id, 1 - (c.embedding OPERATOR(@v.<=>) query), c.content, c.metadata
    FROM @s.chunks c
    WHERE c.embedding IS NOT NULL AND c.document_id IS NULL AND c.metadata @> wanted_filter
    ORDER BY c.embedding OPERATOR(@v.<=>) query
    LIMIT wanted;
END
$$;

CREATE OR REPLACE FUNCTION @s.similar_chunks(chunk_id bigint, k integer DEFAULT 10)
RETURNS TABLE (id bigint, score double precision, content text, metadata jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off SET enable_sort = off AS $$
    SELECT c.id,
           1 - (c.embedding OPERATOR(@v.<=>) (SELECT s.embedding FROM @s.chunks s
                                              WHERE s.id = chunk_id)),
           c.content, c.metadata
    FROM @s.chunks c
    WHERE c.embedding IS NOT NULL AND c.document_id IS NULL AND c.id <> chunk_id
    ORDER BY c.embedding OPERATOR(@v.<=>) (SELECT s.embedding FROM @s.chunks s
                                            WHERE s.id = chunk_id)
    LIMIT k
$$;

-- The k documents nearest to a query vector (see migration 0005).  It reads chunks as
-- the caller, so chunks' row-level security leaves out the passages of rows the caller
-- may not read.  On pgvector 0.7 (no iterative scan, at most 1000 rows per HNSW scan),
-- when the index yields fewer than k documents, the chunks are read again exactly,
-- without the index, as search_chunks does.
CREATE OR REPLACE FUNCTION @s.search_documents(
    query @v.vector,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    source_name text DEFAULT NULL,
    max_passages integer DEFAULT 3
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
    -- How chunks are ordered: by the index's distance, or (exact) by one it cannot serve.
    distance text := '(c.embedding OPERATOR(@v.<=>) $1)';
BEGIN
    IF wanted = 0 THEN
        RETURN;
    END IF;
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
            'FROM (SELECT c.document_id FROM @s.chunks c '
            '      WHERE c.embedding IS NOT NULL AND c.document_id IS NOT NULL '
            '        AND c.metadata @> $2 AND ($3::integer IS NULL OR c.source_id = $3) '
            '      ORDER BY %s LIMIT $4) n', distance)
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
               c.char_end, c.metadata, 1 - (c.embedding OPERATOR(@v.<=>) $1) AS score
        FROM @s.chunks c
        WHERE c.embedding IS NOT NULL AND c.document_id IS NOT NULL
          AND c.metadata @> $2 AND ($3::integer IS NULL OR c.source_id = $3)
        ORDER BY %s
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
    $q$, distance)
    USING query, wanted_filter, sid, width, wanted,
          greatest(coalesce(search_documents.max_passages, 3), 1);
END
$$;

-- What chunks' row-level security policy needs of every role that reads chunks (it runs
-- as that role): the columns of sources that say which table and columns a source reads
-- (not its back-fill position, which is a key), and the policy's functions.
CREATE FUNCTION @s.grant_policy(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %s', @schema_ident_literal, role);
    EXECUTE format('GRANT SELECT (id, name, relation, key_attnum, text_attnums, '
                   'metadata_attnums, metadata_json_attnum) ON %1$s.sources TO %2$s',
                   @schema_ident_literal, role);
    EXECUTE format(
        'GRANT EXECUTE ON FUNCTION %1$s.readable_sources(boolean), '
        '%1$s.columns_readable(regclass, smallint[]), %1$s.passage_visible(integer, text), '
        '%1$s.document_current(bigint) TO %2$s', @schema_ident_literal, role);
END
$$;

-- What a role needs to search (rows, and the passages of the rows it may read) or to
-- write rows and documents.  Run by the indexer's owner: SELECT grant_search('reader').
CREATE FUNCTION @s.grant_search(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @s.grant_policy(role);
    EXECUTE format('GRANT SELECT ON %1$s.chunks, %1$s.alembic_version TO %2$s',
                   @schema_ident_literal, role);
    EXECUTE format(
        'GRANT EXECUTE ON FUNCTION %1$s.search_chunks(%3$s.vector, integer, jsonb), '
        '%1$s.similar_chunks(bigint, integer), '
        '%1$s.search_documents(%3$s.vector, integer, jsonb, text, integer) TO %2$s',
        @schema_ident_literal, role, @vector_ident_literal);
END
$$;

CREATE FUNCTION @s.grant_write(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @s.grant_search(role);
    EXECUTE format('GRANT INSERT, UPDATE, DELETE ON %1$s.chunks, %1$s.documents TO %2$s',
                   @schema_ident_literal, role);
    EXECUTE format('GRANT SELECT ON %1$s.documents TO %2$s', @schema_ident_literal, role);
END
$$;

ALTER FUNCTION @s.chunks_before_write() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @s.chunks_notify() SET search_path = pg_catalog, pg_temp;

-- Roles that already had rights on chunks keep working under its row-level security.
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee::regrole
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        WHERE c.oid = '@s.chunks'::regclass AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        PERFORM @s.grant_policy(grantee);
    END LOOP;
END
$$;
"""

# Every function of the indexer: none is PUBLIC's to run.
FUNCTIONS = (
    "queue_documents(integer, text[], boolean)",
    "source_changed()",
    "add_source(regclass, text, text[], text[], text, text, interval)",
    "detach_source(text, interval)",
    "remove_source(text)",
    "source_unreadable(@s.sources)",
    "current_names(@s.sources)",
    "source_column(regclass, text, boolean)",
    "lock_source(@s.sources)",
    "backfill_source(integer, integer)",
    "source_texts(integer, text[], integer)",
    "readable_sources(boolean)",
    "columns_readable(regclass, smallint[])",
    "passage_visible(integer, text)",
    "document_current(bigint)",
    "search_chunks(@v.vector, integer, jsonb)",
    "similar_chunks(bigint, integer)",
    "search_documents(@v.vector, integer, jsonb, text, integer)",
    "grant_policy(regrole)",
    "grant_search(regrole)",
    "grant_write(regrole)",
    "chunks_before_write()",
    "chunks_notify()",
)

REVOKE = "\n".join(f"REVOKE ALL ON FUNCTION @s.{f} FROM PUBLIC;" for f in FUNCTIONS)

DOWNGRADE = r"""
DROP VIEW @s.indexer_source_status;
DROP POLICY chunks_read ON @s.chunks;
DROP POLICY chunks_insert_rows ON @s.chunks;
DROP POLICY chunks_update_rows ON @s.chunks;
DROP POLICY chunks_delete_rows ON @s.chunks;
ALTER TABLE @s.chunks DISABLE ROW LEVEL SECURITY;
DROP FUNCTION @s.grant_write(regrole);
DROP FUNCTION @s.grant_search(regrole);
DROP FUNCTION @s.grant_policy(regrole);
DROP FUNCTION @s.passage_visible(integer, text);
DROP FUNCTION @s.document_current(bigint);
DROP FUNCTION @s.readable_sources(boolean);
DROP FUNCTION @s.columns_readable(regclass, smallint[]);
DROP FUNCTION @s.source_unreadable(@s.sources);
DROP FUNCTION @s.current_names(@s.sources);
DROP FUNCTION @s.source_column(regclass, text, boolean);
DROP FUNCTION @s.lock_source(@s.sources);
DROP FUNCTION @s.remove_source(text);
DROP FUNCTION @s.detach_source(text, interval);
DROP FUNCTION @s.add_source(regclass, text, text[], text[], text, text, interval);
ALTER TABLE @s.sources
    DROP COLUMN relation,
    DROP COLUMN key_attnum,
    DROP COLUMN text_attnums,
    DROP COLUMN metadata_attnums,
    DROP COLUMN metadata_json_attnum;
ALTER FUNCTION @s.chunks_before_write() RESET search_path;
ALTER FUNCTION @s.chunks_notify() RESET search_path;
CREATE OR REPLACE FUNCTION @s.search_chunks(query @v.vector, k integer DEFAULT 10,
                                             filter jsonb DEFAULT '{}')
RETURNS TABLE (id bigint, score double precision, content text, metadata jsonb)
LANGUAGE sql STABLE AS $$
    SELECT c.id, 1 - (c.embedding <=> query), c.content, c.metadata
    FROM chunks c
    WHERE c.embedding IS NOT NULL AND c.metadata @> filter
    ORDER BY c.embedding <=> query
    LIMIT k
$$;
CREATE OR REPLACE FUNCTION @s.similar_chunks(chunk_id bigint, k integer DEFAULT 10)
RETURNS TABLE (id bigint, score double precision, content text, metadata jsonb)
LANGUAGE sql STABLE AS $$
    SELECT c.id, 1 - (c.embedding <=> (SELECT s.embedding FROM chunks s WHERE s.id = chunk_id)),
           c.content, c.metadata
    FROM chunks c
    WHERE c.embedding IS NOT NULL AND c.id <> chunk_id
    ORDER BY c.embedding <=> (SELECT s.embedding FROM chunks s WHERE s.id = chunk_id)
    LIMIT k
$$;
"""

# 0005's functions as 0005 wrote them (its script is their one definition).
_REVISED = (
    "queue_documents",
    "source_changed",
    "add_source",
    "detach_source",
    "remove_source",
    "backfill_source",
    "source_texts",
    "search_documents",
)

_OF_0005 = (
    "queue_documents(integer, text[], boolean)",
    "source_changed()",
    "add_source(text, text, text[], text[], text, text)",
    "detach_source(text)",
    "remove_source(text)",
    "backfill_source(integer, integer)",
    "source_texts(integer, text[], integer)",
    "search_documents(@v.vector, integer, jsonb, text, integer)",
    "search_chunks(@v.vector, integer, jsonb)",
    "similar_chunks(bigint, integer)",
    "chunks_before_write()",
    "chunks_notify()",
)


def _functions_of_0005() -> str:
    spec = importlib.util.spec_from_file_location(
        "indexer_migration_0005", Path(__file__).with_name("0005_sources.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    script: str = module.UPGRADE
    parts = []
    for name in _REVISED:
        match = re.search(rf"CREATE FUNCTION {name}\(.*?\n\$\$;\n", script, re.DOTALL)
        assert match is not None, name
        parts.append(match.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    view = re.search(r"CREATE VIEW indexer_source_status AS.*?\n\) d ON true;\n", script, re.DOTALL)
    assert view is not None
    parts.append(view.group(0))
    pin = re.search(
        r"DO \$\$\nBEGIN\n    EXECUTE format\('ALTER FUNCTION source_changed.*?\n\$\$;\n",
        script,
        re.DOTALL,
    )
    assert pin is not None
    parts.append(pin.group(0))
    parts.extend(f"GRANT EXECUTE ON FUNCTION @s.{f} TO PUBLIC;\n" for f in _OF_0005)
    return "".join(parts)


def _script(script: str) -> str:
    conn = op.get_bind().connection.driver_connection
    assert conn is not None
    row: Any = conn.execute(
        "SELECT current_schema(), (SELECT n.nspname FROM pg_extension e"
        " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector')"
    ).fetchone()
    schema, vector_schema = row
    ident = sql.Identifier(schema).as_string(conn)
    vector_ident = sql.Identifier(vector_schema).as_string(conn)
    literal = sql.Literal(schema).as_string(conn)
    return (
        script.replace("@schema_ident_literal", sql.Literal(ident).as_string(conn))
        .replace("@vector_ident_literal", sql.Literal(vector_ident).as_string(conn))
        .replace("@schema_literal", literal)
        .replace("@s.", ident + ".")
        .replace("@v.", vector_ident + ".")
    )


def _run(script: str) -> None:
    op.get_bind().connection.driver_connection.execute(_script(script))  # type: ignore[union-attr]


def upgrade() -> None:
    _run(UPGRADE + REVOKE)


def downgrade() -> None:
    # 0005's functions come back from its own script: re-running it would re-create its
    # tables, so the downgrade restores them one by one from 0005's text.
    _run(DOWNGRADE)
    _run(_functions_of_0005())
