"""Model indexes built after the fill: a model added to a large corpus gets its HNSW
index in one build once its vectors are written, not one insert at a time

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

add_model(..., defer_index_at)
    A model's HNSW index is created with its table (on no rows: each vector the fill
    writes is then inserted into the graph) unless at least ``defer_index_at`` chunks
    (default 10,000) are embedded already.  Then the table is made without it, and a
    daemon builds it, with ``CREATE INDEX CONCURRENTLY``, once the fill has reached
    the last chunk (or at once when the model is active): one build over every vector
    costs PostgreSQL a fraction of the inserts into a growing graph, and those inserts,
    at the priority of every other statement, are what slowed searches during a fill.

model_index(model_id)
    The state of a model's index: ``ready``; ``building`` (another session of the
    indexer's owner holds the model's build lock, ``model_index_lock()``: a daemon
    builds it); ``broken`` (an invalid index left by a build that was cut off: the next
    build drops it and starts again); or ``none`` (not built yet).  Only an index of
    the model's own table counts: a
    relation of another role named as the index (in a schema others may create in) is
    none, and the daemon says the name is taken.

activate_model
    Refuses a model whose index is not ready, unless forced, as it refuses a model
    that lacks vectors: its searches would read every one of its vectors.  Forced, the
    model is active at once, and the daemons build its index first.

drop_model
    Cancels a build of the model's index in progress (the build's own statement, in a
    backend of the same role), so a drop does not wait for it.

indexer_model_status
    A column ``index``: the model's ``model_index()``.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# @s: the indexer's schema, @v: pgvector's (quoted identifiers); see migration 0006.
UPGRADE = r"""
-- The first key of the advisory lock a daemon holds while it builds a model's index
-- (the second is the model's id): one per schema of the database.
CREATE FUNCTION @s.model_index_lock() RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT hashtext(@schema_literal || '.model_index') & 2147483647
$$;

-- The HNSW index of a model's vectors: its name (in the indexer's schema).
CREATE FUNCTION @s.model_index_name(model_id integer) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'model_' || model_id || '_vectors_embedding_idx'
$$;

-- ready, building, broken or none (see the migration's docstring); NULL: no such model.
CREATE FUNCTION @s.model_index(model_id integer) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN m.storage = 'column' OR i.indisvalid THEN 'ready'
        WHEN EXISTS (SELECT 1 FROM pg_locks l
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                       AND l.pid <> pg_backend_pid()
                       -- the owner's sessions only: another role's lock is no build
                       AND l.pid IN (SELECT a.pid FROM pg_stat_activity a
                                     WHERE a.usesysid = (SELECT c.relowner FROM pg_class c
                                                         WHERE c.oid = '@s.models'::regclass))
                       AND l.database = (SELECT d.oid FROM pg_database d
                                         WHERE d.datname = current_database())
                       AND l.classid = @s.model_index_lock()::oid
                       AND l.objid = m.id::oid) THEN 'building'
        WHEN i.indexrelid IS NOT NULL THEN 'broken'
        ELSE 'none'
    END
    FROM @s.models m
    -- The index of the model's table only: another role that may create in the schema
    -- may give a relation of its own the index's name.
    LEFT JOIN pg_index i
      ON i.indexrelid = to_regclass(format('%s.%I', @schema_ident_literal,
                                           @s.model_index_name(m.id)))
     AND i.indrelid = to_regclass(@s.model_vectors(m.id))
    WHERE m.id = model_index.model_id
$$;

DROP FUNCTION @s.add_model(text, integer, jsonb, text, boolean, interval);

-- Register a model (the daemon's owner: indexer models add).  Its vectors get a table,
-- readable by the roles that may read chunks (under chunks' rules: a role sees the
-- vectors of the chunks it may read), and an HNSW index: now, or, when at least
-- defer_index_at chunks are embedded, built by a daemon after the fill.  Returns the
-- model's id.
CREATE FUNCTION @s.add_model(name text, dimension integer, record jsonb, fingerprint text,
                             halfvec boolean DEFAULT false,
                             lock_wait interval DEFAULT '200ms',
                             defer_index_at bigint DEFAULT 10000) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id integer;
    same text;
    tbl text;
    grantee regrole;
    deferred boolean;
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
    -- Counted before the table's foreign key locks chunks, and never past the bound.
    deferred := coalesce((SELECT count(*) FROM (SELECT 1 FROM @s.chunks c
                                                WHERE c.state = 'embedded'
                                                LIMIT greatest(defer_index_at, 0)) q)
                         >= defer_index_at, false);
    INSERT INTO @s.models (name, kind, dimension, halfvec, storage, record, fingerprint)
    VALUES (add_model.name, coalesce(add_model.record ->> 'kind', 'local'),
            add_model.dimension, add_model.halfvec, 'table',
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
    IF NOT deferred THEN
        EXECUTE format('CREATE INDEX %I ON %s USING hnsw (embedding @v.%s) '
                       'WITH (m = 16, ef_construction = 64)',
                       @s.model_index_name(new_id), tbl,
                       CASE WHEN add_model.halfvec THEN 'halfvec_cosine_ops'
                            ELSE 'vector_cosine_ops' END);
    END IF;
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

-- The models whose index a daemon should build now: a table of vectors without a valid
-- index, and either active or filled up to (slack chunk ids short of) the last chunk,
-- with none of its earlier text still queued.  Cheap at any size (no count).
CREATE FUNCTION @s.models_to_index(slack bigint DEFAULT 1000)
RETURNS TABLE (model_id integer, name text, halfvec boolean, vectors text, index text,
               state text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.id, m.name, m.halfvec, 'model_' || m.id || '_vectors',
           @s.model_index_name(m.id), @s.model_index(m.id)
    FROM @s.models m
    WHERE m.storage = 'table'
      AND @s.model_index(m.id) IN ('none', 'broken')
      AND (m.active
           OR (coalesce((SELECT max(c.id) FROM @s.chunks c), 0) - m.fill_after <= slack
               AND NOT EXISTS (SELECT 1 FROM @s.model_pending p
                               WHERE p.model_id = m.id AND NOT p.fresh AND NOT p.failed)))
    ORDER BY m.active DESC, m.id
$$;

-- Make a model the active one, in one transaction: search serves it from the commit
-- on.  Refused while embedded chunks lack its vector, or while its index is not built,
-- unless forced (the missing chunks are then missing from its answers until the daemon
-- has embedded them, and its searches read every vector until the index is built).
-- Returns how many were missing.  The daemons are woken, and embed new text with it
-- first.
CREATE OR REPLACE FUNCTION @s.activate_model(name text, force boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target @s.models;
    missing bigint;
    embedded bigint;
    index_state text;
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
    index_state := @s.model_index(target.id);
    IF index_state <> 'ready' AND NOT coalesce(force, false) THEN
        RAISE EXCEPTION 'model % has every vector but its HNSW index is %: wait for a '
            'running daemon to build it (indexer models list shows it), or force the '
            'switch (its searches read every vector until the index is built)',
            target.name, CASE index_state WHEN 'building' THEN 'being built'
                                          ELSE 'not built yet' END
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE @s.models m SET active = false WHERE m.active;
    UPDATE @s.models m SET active = true, activated_at = now() WHERE m.id = target.id;
    PERFORM pg_notify('indexer_chunks', @schema_literal);  -- wakes the daemons
    RETURN missing;
END
$$;
"""

# drop_model of 0009, and what 0011 adds before it drops the table.
_DROP_HEAD = "    DELETE FROM @s.models m WHERE m.id = target.id;\n"
_CANCEL_BUILD = r"""    -- A build of its index in progress holds the table: cancel it (the build's
    -- own statement, in a backend of this role) rather than wait for it.
    PERFORM pg_cancel_backend(a.pid)
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
      AND l.classid = @s.model_index_lock()::oid AND l.objid = target.id::oid
      AND a.usename = current_user AND a.query ILIKE 'CREATE INDEX CONCURRENTLY %';
"""

_GRANTS = r"""
REVOKE ALL ON FUNCTION
    @s.model_index_lock(),
    @s.model_index_name(integer),
    @s.model_index(integer),
    @s.models_to_index(bigint),
    @s.add_model(text, integer, jsonb, text, boolean, interval, bigint)
FROM PUBLIC;
"""

_STATUS_LAST = "       m.activated_at,\n       m.kind,\n"
_STATUS_INDEX = "       m.activated_at,\n       m.kind,\n       @s.model_index(m.id) AS index,\n"

# The downgrade: every model's index built now (what 0010's add_model made at once).
_BUILD_ALL = r"""
DO $$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT x.id, x.halfvec FROM @s.models x
             WHERE x.storage = 'table' AND @s.model_index(x.id) <> 'ready' LOOP
        EXECUTE format('DROP INDEX IF EXISTS %s.%I', @schema_ident_literal,
                       @s.model_index_name(m.id));
        EXECUTE format('CREATE INDEX %I ON %s USING hnsw (embedding @v.%s) '
                       'WITH (m = 16, ef_construction = 64)',
                       @s.model_index_name(m.id), @s.model_vectors(m.id),
                       CASE WHEN m.halfvec THEN 'halfvec_cosine_ops'
                            ELSE 'vector_cosine_ops' END);
    END LOOP;
END
$$;
DROP FUNCTION @s.add_model(text, integer, jsonb, text, boolean, interval, bigint);
DROP FUNCTION @s.models_to_index(bigint);
"""

_DROP_FUNCTIONS = r"""
DROP FUNCTION @s.model_index(integer);
DROP FUNCTION @s.model_index_name(integer);
DROP FUNCTION @s.model_index_lock();
REVOKE ALL ON FUNCTION @s.add_model(text, integer, jsonb, text, boolean, interval) FROM PUBLIC;
"""


def _migration(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"indexer_migration_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_of_0009(name: str) -> str:
    """A function of 0009, as ``CREATE OR REPLACE``."""
    text = str(_migration("0009_models").UPGRADE)
    start = text.index(f"CREATE FUNCTION @s.{name}(")
    end = text.index("\n$$;\n", start) + len("\n$$;\n")
    return text[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _drop_model() -> str:
    text = _function_of_0009("drop_model")
    assert text.count(_DROP_HEAD) == 1
    return text.replace(_DROP_HEAD, _CANCEL_BUILD + _DROP_HEAD)


def _status_of_0010() -> str:
    m0010 = _migration("0010_remote_models")
    return str(m0010._status(_migration("0009_models").STATUS))


def _status() -> str:
    # CREATE OR REPLACE VIEW may only add columns at the end: the new one goes after
    # every column of 0010's view, so it is re-created.
    text = _status_of_0010()
    assert text.count(_STATUS_LAST) == 1
    view = text[text.index("CREATE OR REPLACE VIEW") :]
    view = view.replace("CREATE OR REPLACE VIEW", "CREATE VIEW", 1)
    return "DROP VIEW @s.indexer_model_status;\n" + view.replace(_STATUS_LAST, _STATUS_INDEX, 1)


def _run(script: str) -> None:
    # 0006's placeholder substitution (schema and pgvector's schema, quoted).
    _migration("0006_privileges")._run(script)


def upgrade() -> None:
    _run(UPGRADE + _drop_model() + _status() + _GRANTS)


def downgrade() -> None:
    m0010 = _migration("0010_remote_models")
    add_model_0010 = m0010._add_model_of_0009().replace(m0010._LOCAL_INSERT, m0010._KIND_INSERT)
    status = _status_of_0010()
    view = status[status.index("CREATE OR REPLACE VIEW") :]
    _run(
        _BUILD_ALL
        + add_model_0010
        + _function_of_0009("activate_model")
        + _function_of_0009("drop_model")
        + "DROP VIEW @s.indexer_model_status;\n"
        + view.replace("CREATE OR REPLACE VIEW", "CREATE VIEW", 1)
        + _DROP_FUNCTIONS
    )
