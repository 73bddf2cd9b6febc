"""Attacks on remote models (migration 0010), as tests: what a malicious or broken
server could do to a daemon with a real database.  Each test failed before the fix
committed with it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexer.db.connect import Connection
from indexer.registry import Embedders, register_remote
from indexer.settings import Settings
from indexer.store import Store

from ..fake_provider import FakeProvider, Fault
from .test_privileges import as_role, role
from .test_remote_models import DIM, KEY, _config, _worker, embedders, provider, store

# The fixtures (by name) and helpers of the remote models' own tests.
__all__ = ["embedders", "provider", "store"]


def _answer(body: object) -> Fault:
    return Fault(
        "raw", status=200, body=json.dumps(body).encode(), headers=(("Content-Type", "json"),)
    )


def _states(database: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database) as conn:
        return conn.execute("SELECT state, attempts, last_error FROM chunks ORDER BY id").fetchall()


@pytest.mark.parametrize(
    "fault",
    [
        # A list where a number should be: numpy refuses the ragged array (ValueError).
        _answer({"data": [{"index": 0, "embedding": [[0.1, 0.2], *[0.1] * (DIM - 1)]}]}),
        # Nested deeper than Python's JSON parser recurses (RecursionError).
        Fault("raw", status=200, body=b"[" * 100_000),
    ],
    ids=["ragged", "deep"],
)
def test_a_strange_answer_is_a_bad_answer_not_the_daemons_end(
    settings: Settings,
    store: Store,
    embedders: Embedders,
    provider: FakeProvider,
    database: str,
    fault: Fault,
) -> None:
    """Attack: a server answers 200 with a vector holding a list, or with JSON nested
    100 000 deep.  Before: ValueError / RecursionError escaped the worker, the daemon
    stopped, and the claimed row came back to it after its lease, forever."""
    register_remote(store, "fake", _config(provider))
    store.activate_model("fake")
    store.insert_chunks(["a text the server answers strangely"], ["{}"])
    provider.script(fault)
    quick = dataclasses.replace(settings, max_attempts=5)
    _worker(quick, store, embedders).run(once=True)
    ((state, attempts, error),) = _states(database)
    assert (state, attempts) == ("pending", 1)
    assert "answer" in error


@pytest.mark.parametrize("tokens", [10**19, 10**400], ids=["past-bigint", "past-float"])
def test_an_unbelievable_token_count_breaks_neither_the_batch_nor_the_status(
    settings: Settings,
    store: Store,
    embedders: Embedders,
    provider: FakeProvider,
    database: str,
    tokens: int,
) -> None:
    """Attack: a server reports ``usage.prompt_tokens`` of 10**19 (past bigint) or
    10**400 (past a float).  Before: the first was recorded, and indexer_model_status
    (so ``indexer status``, /health's models) failed for a day with "out of range for
    type bigint"; the second raised OverflowError out of the worker (the cost)."""
    register_remote(store, "fake", _config(provider))
    store.activate_model("fake")
    store.insert_chunks(["a text whose cost is a lie"], ["{}"])
    vector = provider.vector("a text whose cost is a lie").tolist()
    provider.script(
        Fault(
            "raw",
            status=200,
            body=(
                f'{{"data": [{{"index": 0, "embedding": {json.dumps(vector)}}}], '
                f'"usage": {{"prompt_tokens": {tokens}}}}}'
            ).encode(),
        )
    )
    _worker(settings, store, embedders).run(once=True)
    assert [s[0] for s in _states(database)] == ["embedded"]
    (row,) = [r for r in store.model_status() if r["model"] == "fake"]
    assert row["provider_tokens"] is None


def test_searching_and_writing_roles_cannot_point_the_daemon_at_their_own_server(
    conn: Connection, database: str, store: Store, provider: FakeProvider
) -> None:
    """A role granted search, or write, may read the registry (a search opens its model
    from the record, which holds no key) but not register, change or activate a model:
    pointing the daemon's requests, and every row's text, at a server it controls needs
    the owner's rights.  Nor may it read the remote models' outages view."""
    register_remote(store, "fake", _config(provider))
    for grant in ("grant_search", "grant_write"):
        with role(conn, database) as (name, dsn):
            conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(grant)), (name,))
            with as_role(dsn) as attacker:
                row = attacker.execute("SELECT record FROM models WHERE name = 'fake'").fetchone()
                assert row is not None and KEY not in json.dumps(row[0])
                attempts = [
                    "UPDATE models SET record = jsonb_set(record, '{url}', "
                    "'\"http://attacker.example/v1\"') WHERE name = 'fake'",
                    "INSERT INTO models (name, kind, dimension, storage, record, fingerprint) "
                    "VALUES ('evil', 'remote', 16, 'table', '{}', 'x')",
                    "SELECT add_model('evil', 16, '{\"kind\": \"remote\"}'::jsonb, 'x')",
                    "SELECT activate_model('fake', true)",
                    "SELECT drop_model('fake')",
                    "SELECT * FROM indexer_model_away",
                ]
                for statement in attempts:
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        attacker.execute(statement)
    (fake,) = [m for m in store.models() if m.name == "fake"]
    assert fake.record is not None and fake.record["url"] == provider.url
