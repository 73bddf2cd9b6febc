"""Remote models: a model served by an OpenAI-compatible ``/v1/embeddings`` endpoint

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

models.kind
    ``local`` (a model folder the daemon runs with ONNX Runtime) or ``remote`` (a
    server the daemon calls).  A remote model's ``record`` is its endpoint: base URL,
    the provider's model name, dimension, prefixes, request limits, the *name* of the
    environment variable that holds its API key (never the key) and an optional price
    per million tokens; its ``fingerprint`` is the sha256 of the parts that decide its
    vectors.  Everything else (its table of vectors, its fill, the switch) is a model
    like any other.

add_model
    Registers the model with the kind its record states (``local`` when it states
    none, as every record written before did).

indexer_model_away, indexer_model_status
    The remote models whose server is still away: the latest ``provider_away`` with no
    batch of the model after it (``away_since``, ``away_error``).  The status view has
    those two columns, ``kind``, and, over the last 24 hours, ``provider_tokens`` (what
    the server reported in ``usage``) and ``cost`` (at the registered price),
    ``cache_saved_tokens`` and ``cache_saved_cost``: what the vector cache's hits would
    have cost at the batches' mean tokens per text.

events
    A new kind, ``provider_away``: a daemon found a remote model's server busy (429,
    503 with Retry-After, past its patience) or down (errors and timeouts through its
    retries), gave the work back without counting an attempt against any row, and
    waits (``detail``: model, reason, error, retry_after).  ``indexer status`` shows a
    model whose latest such event has no batch after it.
"""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_LOCAL_INSERT = (
    "INSERT INTO @s.models (name, dimension, halfvec, storage, record, fingerprint)\n"
    "    VALUES (add_model.name, add_model.dimension, add_model.halfvec, 'table',\n"
    "            add_model.record, add_model.fingerprint)"
)
_KIND_INSERT = (
    "INSERT INTO @s.models (name, kind, dimension, halfvec, storage, record, fingerprint)\n"
    "    VALUES (add_model.name, coalesce(add_model.record ->> 'kind', 'local'),\n"
    "            add_model.dimension, add_model.halfvec, 'table',\n"
    "            add_model.record, add_model.fingerprint)"
)

_KINDS = r"""
ALTER TABLE @s.models DROP CONSTRAINT models_kind_check;
ALTER TABLE @s.models ADD CONSTRAINT models_kind_check CHECK (kind IN (@kinds));
"""

_EVENTS = r"""
ALTER TABLE @s.events DROP CONSTRAINT events_kind_check;
ALTER TABLE @s.events ADD CONSTRAINT events_kind_check CHECK (kind IN (
    'worker_started', 'worker_stopped', 'batch_completed', 'batch_failed', 'model_batch'@more));
"""

_FORGET_AWAY = r"""
DELETE FROM @s.events WHERE kind = 'provider_away';
"""

_REFUSE_REMOTE = r"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM @s.models WHERE kind = 'remote') THEN
        RAISE EXCEPTION 'remote models are registered: drop them first '
            '(indexer models drop NAME), then downgrade'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
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


def _add_model_of_0009() -> str:
    """0009's add_model, as ``CREATE OR REPLACE``."""
    match = re.search(
        r"CREATE FUNCTION @s\.add_model\(.*?\n\$\$;\n",
        _migration("0009_models").UPGRADE,
        re.DOTALL,
    )
    assert match is not None
    text = match.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    assert _LOCAL_INSERT in text
    return text


_STATUS_COLUMNS_0009 = "       m.activated_at\nFROM @s.models m\n"
_STATUS_COLUMNS = """       m.activated_at,
       m.kind,
       w.away_since,
       w.away_error,
       u.provider_tokens,
       u.cost,
       CASE WHEN u.fresh > 0 THEN round(u.reused * u.provider_tokens / u.fresh)::bigint END
           AS cache_saved_tokens,
       CASE WHEN u.fresh > 0 THEN u.reused * u.cost / u.fresh END AS cache_saved_cost
FROM @s.models m
"""
_STATUS_JOINS = """
LEFT JOIN @s.indexer_model_away w ON w.model_id = m.id
LEFT JOIN LATERAL (
    -- What the server reported over the last day, and what the cache's hits saved.
    SELECT sum((b.detail #>> '{provider,prompt_tokens}')::bigint)::bigint AS provider_tokens,
           sum((b.detail #>> '{provider,cost}')::float8) AS cost,
           sum(b.reused_count) AS reused,
           sum(b.row_count - b.reused_count) AS fresh
    FROM @s.events b
    WHERE b.kind IN ('batch_completed', 'model_batch') AND b.at > now() - interval '1 day'
      AND b.detail ->> 'model' = m.name AND b.detail ? 'provider'
) u ON m.kind = 'remote';
"""


_AWAY = """
-- The remote models whose server is still away: no batch of the model since its latest
-- provider_away event (cheap: the events' (kind, at) index).
CREATE VIEW @s.indexer_model_away AS
SELECT m.id AS model_id, m.name AS model, a.at AS away_since, a.detail ->> 'error' AS away_error
FROM @s.models m
CROSS JOIN LATERAL (
    SELECT e.at, e.detail FROM @s.events e
    WHERE e.kind = 'provider_away' AND e.detail ->> 'model' = m.name
    ORDER BY e.at DESC
    LIMIT 1
) a
WHERE m.kind = 'remote'
  AND NOT EXISTS (
      SELECT 1 FROM @s.events b
      WHERE b.kind IN ('batch_completed', 'model_batch') AND b.at > a.at
        AND b.detail ->> 'model' = m.name);
"""


def _status(status_0009: str) -> str:
    """0009's indexer_model_status with the remote models' columns."""
    assert _STATUS_COLUMNS_0009 in status_0009 and status_0009.rstrip().endswith(") r ON true;")
    text = status_0009.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)
    text = text.replace(_STATUS_COLUMNS_0009, _STATUS_COLUMNS, 1)
    return _AWAY + text.rstrip()[: -len(";")] + _STATUS_JOINS


def _run(script: str) -> None:
    # 0006's placeholder substitution (schema and pgvector's schema, quoted).
    _migration("0006_privileges")._run(script)


def upgrade() -> None:
    kinds = _KINDS.replace("@kinds", "'local', 'remote'")
    events = _EVENTS.replace("@more", ", 'provider_away'")
    status = _status(_migration("0009_models").STATUS)
    _run(kinds + events + _add_model_of_0009().replace(_LOCAL_INSERT, _KIND_INSERT) + status)


def downgrade() -> None:
    kinds = _KINDS.replace("@kinds", "'local'")
    events = _FORGET_AWAY + _EVENTS.replace("@more", "")
    status = (
        "DROP VIEW @s.indexer_model_status;\nDROP VIEW @s.indexer_model_away;\n"
        + _migration("0009_models").STATUS
    )
    _run(_REFUSE_REMOTE + kinds + events + _add_model_of_0009() + status)
