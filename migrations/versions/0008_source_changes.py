"""Source changes: the triggers only append, the daemon applies; sources' problems shown

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

source_changes, source_changed (the triggers' function)
    Until now the triggers queued and deleted documents themselves, inside the
    application's transaction: an upsert and a delete on ``source_documents`` (and the
    delete's cascade into ``chunks``) read index and heap pages that other
    transactions' bookkeeping writes.  Under SERIALIZABLE those reads are predicate
    locks, and unrelated transactions failed each other (4 sessions deleting disjoint
    rows: 80.8% serialization failures with a source, 0% without).  The triggers now
    only append to ``source_changes`` (a key changed, a key is gone, or the table was
    truncated: ``doc_key`` NULL) and notify the daemons; an append reads nothing that
    another transaction writes.  The daemon applies the changes in their order
    (``apply_source_changes``) before it claims documents.

    Until the daemon has applied a change, search serves what it served before it: a
    deleted row's passages too, for a role that may read the row's table.  Search does
    not read ``source_changes``: a transaction that searches and then writes a source
    table would otherwise conflict, under SERIALIZABLE, with every other one that does.
    To a role under row-level security, a row with a change not applied yet shows no
    passage (``document_current``, as for a document queued again): a row that becomes
    readable with new text never shows its old text.

apply_source_changes(batch)
    Takes up to ``batch`` changes, oldest first, of the sources whose row it can lock
    (``FOR NO KEY UPDATE SKIP LOCKED``: one caller at a time per source, and a lock
    only a role that may update ``sources`` can take), and applies them as the
    triggers of migration 0006 did, key by key: a key whose row was deleted loses its
    document and passages; a key whose row exists after its latest change is queued
    (again, or anew after a delete); a truncation deletes the source's documents
    first, and only the changes made after it count.  A key's changes come in the
    order they were committed, since the key is unique and its index checked at once:
    a second change to a key waits for the first transaction's row lock.  A change
    that cannot be applied (a key too long for the documents' index) is kept with its
    error and not applied again; the others go on.  Changes of removed sources are
    dropped.  Returns how many changes it took.  The daemon's role only (the owner).

add_source
    Refuses a partition, as it refused a partitioned table (statements on the
    partitioned table do not fire a partition's statement triggers); a key whose only
    unique constraint is INITIALLY DEFERRED (two rows may share a key until commit,
    and their changes would come out of order; a DEFERRABLE INITIALLY IMMEDIATE one is
    checked, waiting for a concurrent writer of the key, before the statement's
    trigger runs); and a table that is a source of the indexer in
    another schema (the triggers' names are the same: the other source would lose
    them, and miss every change).

indexer_source_status
    Two new columns, at the end: ``changes_pending`` (appended by the triggers, not
    applied yet) and ``problem``, one line when the source is registered in a way
    ``sources add`` no longer accepts, or has changes that could not be applied:

    * its table is partitioned, or a partition: changes made through the other table
      are missed;
    * its key's type is not smallint, integer, bigint, text, varchar or uuid: the key's
      text depends on the session's settings (TimeZone, DateStyle, extra_float_digits,
      bytea_output, IntervalStyle), and a key written under other settings than the
      daemon's is not recognised;
    * its key's unique constraint is INITIALLY DEFERRED;
    * changes that could not be applied, how many, and the first one's error.

The daemon's connections use READ COMMITTED whatever the database's default
(``default_transaction_isolation``): the daemon's own statements are written for it.
"""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# @s: the indexer's schema, @v: pgvector's (quoted identifiers); see migration 0006.
UPGRADE = r"""
CREATE TABLE @s.source_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key: its check would read sources in the application's transaction.
    source_id integer NOT NULL,
    doc_key text,
    gone boolean NOT NULL,
    error text
);
COMMENT ON TABLE @s.source_changes IS
    'What the triggers of sources'' tables saw, to be applied by the daemon '
    '(apply_source_changes): a key changed or gone, or the table truncated (doc_key NULL).';
COMMENT ON COLUMN @s.source_changes.error IS
    'Why the change could not be applied (a key too long for the documents'' index, say): '
    'it is kept, not applied again, and shown as its source''s problem.';
CREATE INDEX source_changes_key_idx ON @s.source_changes (source_id, doc_key);

-- The triggers on a source table (see migration 0006 for what they trust and refuse).
-- They append and notify; they read no row another transaction writes.
CREATE OR REPLACE FUNCTION @s.source_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src @s.sources;
    key_type oid;
    watched text;
    appended bigint;
    more bigint;
BEGIN
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'STATEMENT' OR TG_NARGS <> 1
       OR TG_ARGV[0] !~ '^[0-9]{1,9}$' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO src FROM @s.sources s WHERE s.id = TG_ARGV[0]::integer;
    IF NOT FOUND OR src.relation IS DISTINCT FROM TG_RELID THEN
        RETURN NULL;  -- not this source's table: a trigger left behind, or not ours
    END IF;
    IF TG_OP = 'TRUNCATE' THEN  -- reads no column: whatever its key has become
        INSERT INTO @s.source_changes (source_id, doc_key, gone) VALUES (src.id, NULL, true);
        PERFORM pg_notify('indexer_chunks', @schema_literal);
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
        EXECUTE format('INSERT INTO %2$s.source_changes (source_id, doc_key, gone) '
                       'SELECT $1, o.%1$I::text, true FROM old_rows o',
                       src.key_column, @schema_ident_literal)
            USING src.id;
        GET DIAGNOSTICS appended = ROW_COUNT;
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('INSERT INTO %2$s.source_changes (source_id, doc_key, gone) '
                       'SELECT $1, n.%1$I::text, false FROM new_rows n',
                       src.key_column, @schema_ident_literal)
            USING src.id;
        GET DIAGNOSTICS appended = ROW_COUNT;
    ELSE
        SELECT string_agg(format('format(%L, o.%I) IS DISTINCT FROM format(%L, n.%I)',
                                 '%L', c, '%L', c), ' OR ')
        INTO watched
        FROM unnest(src.text_columns || src.metadata_columns
                    || array_remove(ARRAY[src.metadata_json], NULL)) AS c;
        EXECUTE format(
            'INSERT INTO %3$s.source_changes (source_id, doc_key, gone) '
            'SELECT $1, n.%1$I::text, false FROM new_rows n LEFT JOIN old_rows o '
            'ON o.%1$I = n.%1$I WHERE o.%1$I IS NULL OR %2$s', src.key_column,
            coalesce(watched, 'false'),  -- every watched column dropped: only new keys
            @schema_ident_literal)
            USING src.id;
        GET DIAGNOSTICS appended = ROW_COUNT;
        EXECUTE format(
            'INSERT INTO %2$s.source_changes (source_id, doc_key, gone) '
            'SELECT $1, o.%1$I::text, true FROM old_rows o LEFT JOIN new_rows n '
            'ON n.%1$I = o.%1$I WHERE n.%1$I IS NULL', src.key_column, @schema_ident_literal)
            USING src.id;
        GET DIAGNOSTICS more = ROW_COUNT;
        appended := appended + more;
    END IF;
    IF appended > 0 THEN
        PERFORM pg_notify('indexer_chunks', @schema_literal);
    END IF;
    RETURN NULL;
END
$$;

-- One source's share of a batch of changes, applied (see apply_source_changes).
CREATE FUNCTION @s.apply_source_step(sid integer, truncated boolean, deleted text[],
                                      changed text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF truncated THEN
        DELETE FROM @s.source_documents WHERE source_id = sid;
    END IF;
    IF cardinality(deleted) > 0 THEN
        -- See migration 0005: wait for a back-fill that queued these keys, then delete.
        INSERT INTO @s.source_documents (source_id, doc_key)
        SELECT DISTINCT sid, k FROM unnest(deleted) AS k ORDER BY k
        ON CONFLICT (source_id, doc_key) DO NOTHING;
        DELETE FROM @s.source_documents WHERE source_id = sid AND doc_key = ANY(deleted);
    END IF;
    PERFORM @s.queue_documents(sid, changed);
END
$$;

CREATE FUNCTION @s.apply_source_changes(batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    plan jsonb;
    step jsonb;
    taken bigint;
    orphans bigint;
    sid integer;
    deleted text[];
    changed text[];
    k text;
    locked integer[];
BEGIN
    -- A source's changes are applied by one caller at a time, in their order: each
    -- caller takes those of the sources whose row it could lock (a lock only a role
    -- that may update sources can take), and leaves the others to the caller holding them.
    locked := ARRAY(SELECT s.id FROM @s.sources s
                    WHERE EXISTS (SELECT 1 FROM @s.source_changes g
                                  WHERE g.source_id = s.id AND g.error IS NULL)
                    ORDER BY s.id
                    FOR NO KEY UPDATE SKIP LOCKED);
    DELETE FROM @s.source_changes g  -- those of removed sources
    WHERE NOT EXISTS (SELECT 1 FROM @s.sources s WHERE s.id = g.source_id);
    GET DIAGNOSTICS orphans = ROW_COUNT;
    WITH taken AS (
        DELETE FROM @s.source_changes c
        WHERE c.id IN (SELECT o.id FROM @s.source_changes o
                       WHERE o.source_id = ANY(locked) AND o.error IS NULL
                       ORDER BY o.id LIMIT greatest(coalesce(batch, 10000), 1))
        RETURNING c.id, c.source_id, c.doc_key, c.gone
    ), cut AS (
        SELECT t.source_id, max(t.id) FILTER (WHERE t.doc_key IS NULL) AS truncated_at,
               count(*) AS n
        FROM taken t GROUP BY t.source_id
    ), keyed AS (  -- per key: was its row deleted; is it gone now (its latest change)
        SELECT t.source_id, t.doc_key, bool_or(t.gone) AS deleted,
               (array_agg(t.gone ORDER BY t.id DESC))[1] AS gone
        FROM taken t JOIN cut ON cut.source_id = t.source_id
        WHERE t.doc_key IS NOT NULL AND t.id > coalesce(cut.truncated_at, 0)
        GROUP BY t.source_id, t.doc_key
    )
    SELECT sum(cut.n),
           jsonb_agg(jsonb_build_object(
               'source', cut.source_id,
               'truncated', cut.truncated_at IS NOT NULL,
               'deleted', (SELECT coalesce(jsonb_agg(k.doc_key ORDER BY k.doc_key), '[]')
                           FROM keyed k WHERE k.source_id = cut.source_id AND k.deleted),
               'changed', (SELECT coalesce(jsonb_agg(k.doc_key ORDER BY k.doc_key), '[]')
                           FROM keyed k WHERE k.source_id = cut.source_id AND NOT k.gone))
               ORDER BY cut.source_id)
    INTO taken, plan
    FROM cut;
    FOR step IN SELECT * FROM jsonb_array_elements(coalesce(plan, '[]')) LOOP
        sid := (step->>'source')::integer;
        deleted := ARRAY(SELECT jsonb_array_elements_text(step->'deleted'));
        changed := ARRAY(SELECT jsonb_array_elements_text(step->'changed'));
        BEGIN
            PERFORM @s.apply_source_step(sid, (step->>'truncated')::boolean, deleted, changed);
        EXCEPTION WHEN data_exception OR integrity_constraint_violation
                       OR program_limit_exceeded THEN
            -- One change that cannot be applied (a key too long for the documents'
            -- index, say) must not hold up the others: apply them one by one, and keep
            -- each one that fails, with its error (the source's problem in its status).
            -- Other errors (a lock, a deadlock, the server going away) are the whole
            -- batch's: it is rolled back and taken again.
            PERFORM @s.apply_source_step(sid, (step->>'truncated')::boolean, '{}', '{}');
            FOREACH k IN ARRAY deleted LOOP
                BEGIN
                    PERFORM @s.apply_source_step(sid, false, ARRAY[k], '{}');
                EXCEPTION WHEN data_exception OR integrity_constraint_violation
                               OR program_limit_exceeded THEN
                    INSERT INTO @s.source_changes (source_id, doc_key, gone, error)
                    VALUES (sid, k, true, SQLERRM);
                END;
            END LOOP;
            FOREACH k IN ARRAY changed LOOP
                BEGIN
                    PERFORM @s.apply_source_step(sid, false, '{}', ARRAY[k]);
                EXCEPTION WHEN data_exception OR integrity_constraint_violation
                               OR program_limit_exceeded THEN
                    INSERT INTO @s.source_changes (source_id, doc_key, gone, error)
                    VALUES (sid, k, false, SQLERRM);
                END;
            END LOOP;
        END;
    END LOOP;
    RETURN coalesce(taken, 0) + orphans;
END
$$;

-- Under row-level security a passage is served only while its document is current
-- (migration 0006): indexed, and now also with no change to its row waiting to be
-- applied, so that a row that becomes readable with new text does not show its old
-- text meanwhile.
-- (Index scans whatever the statistics say: a table analysed while nearly empty must not
-- make each call read every change of a bulk update.)
CREATE OR REPLACE FUNCTION @s.document_current(document bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off AS $$
    SELECT EXISTS (SELECT 1 FROM @s.source_documents d
                   WHERE d.id = document AND d.state = 'indexed'
                     AND NOT EXISTS (SELECT 1 FROM @s.source_changes g
                                     WHERE g.source_id = d.source_id AND g.doc_key = d.doc_key)
                     AND NOT EXISTS (SELECT 1 FROM @s.source_changes g
                                     WHERE g.source_id = d.source_id AND g.doc_key IS NULL))
$$;
"""

# The status view, as 0006 made it, with the two columns added at the end.
STATUS_VIEW = r"""
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
       t.oid IS NOT NULL AS table_present,
       (SELECT count(*) FROM @s.source_changes g
        WHERE g.source_id = s.id AND g.error IS NULL) AS changes_pending,
       CASE
           WHEN t.relkind = 'p' THEN
               'its table is partitioned: changes made through its partitions are missed; '
               'a partitioned table cannot be a source: remove it'
           WHEN t.relispartition THEN
               format('its table is a partition of %s: changes made through that table '
                      'are missed; a partition cannot be a source: remove it',
                      (SELECT i.inhparent::regclass FROM pg_inherits i
                       WHERE i.inhrelid = t.oid LIMIT 1))
           WHEN k.atttypid NOT IN ('smallint'::regtype, 'integer'::regtype,
                                   'bigint'::regtype, 'text'::regtype,
                                   'character varying'::regtype, 'uuid'::regtype) THEN
               format('its key column %s is of type %s, whose text depends on session '
                      'settings: changes written under other settings are missed; remove '
                      'the source and add it with a key column of type smallint, integer, '
                      'bigint, text, varchar or uuid',
                      quote_ident(k.attname), format_type(k.atttypid, NULL))
           WHEN k.attnum IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM pg_index i
               WHERE i.indrelid = s.relation AND i.indisunique
                 AND i.indnkeyatts = 1 AND i.indkey[0] = k.attnum
                 AND i.indpred IS NULL AND i.indexprs IS NULL
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                                 WHERE c.conindid = i.indexrelid AND c.condeferred)) THEN
               format('its key column %s has no unique index checked at the end of each '
                      'statement (an INITIALLY DEFERRED one lets two rows share a key until '
                      'commit): changes may be applied out of order; remove the source and '
                      'add it with such a key', quote_ident(k.attname))
           WHEN f.n > 0 THEN
               format('%s could not be applied (the first: %s); its rows are not indexed',
                      CASE WHEN f.n = 1 THEN '1 change' ELSE f.n || ' changes' END, f.error)
       END AS problem
FROM @s.sources s
LEFT JOIN pg_class t ON t.oid = s.relation
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_attribute k ON k.attrelid = s.relation AND k.attnum = s.key_attnum
                        AND NOT k.attisdropped
LEFT JOIN LATERAL (
    SELECT count(*) AS n, min(g.error) AS error
    FROM @s.source_changes g
    WHERE g.source_id = s.id AND g.error IS NOT NULL
) f ON true
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
"""

REVOKE = r"""
REVOKE EXECUTE ON FUNCTION @s.apply_source_changes(integer),
    @s.apply_source_step(integer, boolean, text[], text[]) FROM PUBLIC;
"""

# add_source as 0006 made it, refusing a partition (statements on its partitioned table
# do not fire its statement triggers), a key whose unique constraint is INITIALLY
# DEFERRED (two rows may share the key until commit, and their changes come out of
# order) and a table that is another indexer schema's source: what changes in its
# text, old and new.
_ADD_SOURCE_NOW = (
    (
        "'reach the indexer''s triggers on it; add each partition as a source',",
        "'reach the indexer''s triggers on it; partitioned tables cannot be sources',",
    ),
    (
        """    ELSIF kind <> 'r' THEN
        RAISE EXCEPTION '% is not a table', qualified USING ERRCODE = 'wrong_object_type';
""",
        """    ELSIF kind <> 'r' THEN
        RAISE EXCEPTION '% is not a table', qualified USING ERRCODE = 'wrong_object_type';
    ELSIF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = rel AND c.relispartition)
    THEN
        RAISE EXCEPTION '% is a partition: statements on its partitioned table would not '
                        'reach the indexer''s triggers on it; partitions and partitioned '
                        'tables cannot be sources', qualified
            USING ERRCODE = 'wrong_object_type';
""",
    ),
    (
        """qualified USING ERRCODE = 'duplicate_object';
    END IF;
""",
        """qualified USING ERRCODE = 'duplicate_object';
    END IF;
    SELECT n.nspname INTO nsp_other
    FROM pg_catalog.pg_trigger tg
    JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE tg.tgrelid = rel AND tg.tgname LIKE 'indexer\\_source\\_%'
      AND p.proname = 'source_changed' AND p.oid <> '@s.source_changed()'::regprocedure
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% is already a source of the indexer in schema %: its triggers would '
                        'be replaced, and that source would miss every change', qualified,
                        quote_ident(nsp_other)
            USING ERRCODE = 'duplicate_object';
    END IF;
""",
    ),
    (
        "    qualified text;\n",
        "    qualified text;\n    nsp_other text;\n",
    ),
    (
        "WHERE i.indrelid = rel AND i.indisunique AND i.indnkeyatts = 1",
        "WHERE i.indrelid = rel AND i.indisunique AND i.indnkeyatts = 1 AND NOT EXISTS ("
        "SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid"
        " AND c.condeferred)",
    ),
    (
        "'index on it alone)', quote_ident(key_column), qualified",
        "'index on it alone, not INITIALLY DEFERRED)', quote_ident(key_column), qualified",
    ),
)


DOWNGRADE = r"""
DO $$
BEGIN
    -- No change may come in, nor be taken by a daemon, from here on: the sources first
    -- (the order in which apply_source_changes locks), then the changes; both wait for
    -- the transactions holding them.  Then apply every change.
    LOCK TABLE @s.sources IN EXCLUSIVE MODE;
    LOCK TABLE @s.source_changes IN EXCLUSIVE MODE;
    WHILE EXISTS (SELECT 1 FROM @s.source_changes WHERE error IS NULL) LOOP
        PERFORM @s.apply_source_changes(100000);
    END LOOP;
END
$$;
"""

DOWNGRADE_DROP = r"""
DROP VIEW @s.indexer_source_status;
DROP FUNCTION @s.apply_source_changes(integer);
DROP FUNCTION @s.apply_source_step(integer, boolean, text[], text[]);
DROP TABLE @s.source_changes;
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


def _add_source_of_0006() -> str:
    function = _of_0006(r"CREATE FUNCTION @s\.add_source\(.*?\n\$\$;\n")
    return function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _add_source() -> str:
    """0006's add_source (its one definition), refusing partitions and deferrable keys."""
    function = _add_source_of_0006()
    for old, new in _ADD_SOURCE_NOW:
        assert function.count(old) == 1, old
        function = function.replace(old, new)
    return function


def _source_changed_of_0006() -> str:
    return _of_0006(r"CREATE OR REPLACE FUNCTION @s\.source_changed\(\).*?\n\$\$;\n")


def _status_view_of_0006() -> str:
    view = _of_0006(r"CREATE OR REPLACE VIEW @s\.indexer_source_status AS.*?\n\) d ON true;\n")
    return view.replace("CREATE OR REPLACE VIEW", "CREATE VIEW", 1)


def _run(script: str) -> None:
    # 0006's placeholder substitution (schema and pgvector's schema, quoted).
    _migration("0006_privileges")._run(script)


def upgrade() -> None:
    _run(UPGRADE + STATUS_VIEW + _add_source() + REVOKE)


def downgrade() -> None:
    # Apply what the triggers appended, then put back 0006's functions (the triggers
    # queue and delete documents themselves again).  One transaction: the locks taken
    # first hold until the table is gone.
    _run(
        DOWNGRADE
        + _source_changed_of_0006()
        + _add_source_of_0006()
        + _of_0006(r"CREATE FUNCTION @s\.document_current\(.*?\n\$\$;\n").replace(
            "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
        )
        + DOWNGRADE_DROP
        + _status_view_of_0006()
    )
