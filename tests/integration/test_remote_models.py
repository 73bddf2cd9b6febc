"""Remote models (migration 0010) with a real daemon loop and a real database: a model on
an OpenAI-compatible server registered, filled, activated, searched and rolled back;
every fault of the server costs nothing (no row lost, no wrong vector, no attempt for a
busy or down server); tokens and cost recorded; the API key nowhere.  The servers are the
scriptable fake of tests/fake_provider.py and the indexer's own /v1/embeddings."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from indexer.app import Indexer
from indexer.cli.output import source_line
from indexer.db import migrate
from indexer.embedding import Embedder
from indexer.embedding.remote import RemoteConfig
from indexer.exceptions import ConfigurationError, IndexerError
from indexer.registry import Embedders, reconcile, register_remote
from indexer.settings import Settings
from indexer.store import Store
from indexer.worker import Worker

from ..fake_provider import FakeProvider, Fault
from ..helpers import cli_env, run_cli, wait_until
from .test_http import serve

KEY = "sk-test-0123456789abcdef"
DIM = 16


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    with Store(settings.database_url or "", settings.schema) as s:
        yield s


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProvider]:
    monkeypatch.setenv("FAKE_PROVIDER_KEY", KEY)
    with FakeProvider(dimension=DIM, model="fake-embed") as fake:
        yield fake


def _config(provider: FakeProvider, **more: Any) -> RemoteConfig:
    return RemoteConfig(
        url=provider.url,
        model="fake-embed",
        dimension=DIM,
        api_key_env="FAKE_PROVIDER_KEY",
        price_per_million=0.02,
        **more,
    )


@pytest.fixture
def embedders(settings: Settings, embedder: Embedder) -> Iterator[Embedders]:
    """Every registered model's embedder; the remote ones' connections closed after."""
    opened = Embedders(settings, embedder)
    yield opened
    opened.close()


def _worker(settings: Settings, store: Store, embedders: Embedders) -> Worker:
    reconcile(store.models(), embedders.configured, store)
    return Worker(settings, store, embedders.configured, load_model=embedders.loader)


def _vectors(conn: psycopg.Connection[Any], model: str) -> dict[str, np.ndarray]:
    """Each chunk's current vector of a model kept in a table of its own, by text."""
    row = conn.execute("SELECT id FROM models WHERE name = %s", (model,)).fetchone()
    assert row is not None
    model_id = row[0]
    rows = conn.execute(
        sql.SQL(
            "SELECT c.content, v.embedding::text FROM chunks c JOIN {} v ON v.chunk_id = c.id "
            "WHERE v.content_version = c.content_version"
        ).format(sql.Identifier(f"model_{model_id}_vectors"))
    ).fetchall()
    return {r[0]: np.array(json.loads(r[1]), dtype=np.float32) for r in rows}


def _everything_recorded(conn: psycopg.Connection[Any]) -> str:
    """Every event, model record and status row, as text."""
    parts = [
        str(r)
        for query in (
            "SELECT * FROM events",
            "SELECT * FROM models",
            "SELECT * FROM indexer_model_status",
            "SELECT * FROM chunks",
        )
        for r in conn.execute(query).fetchall()
    ]
    return "\n".join(parts)


def test_a_remote_model_is_filled_activated_searched_and_rolled_back(
    settings: Settings,
    store: Store,
    embedder: Embedder,
    embedders: Embedders,
    provider: FakeProvider,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts = [f"remote note {i} about the {['sea', 'hills', 'city'][i % 3]}" for i in range(40)]
    store.insert_chunks(texts, ["{}"] * len(texts))
    _worker(settings, store, embedders).run(once=True)

    register_remote(store, "fake", _config(provider))
    assert provider.requests[0].headers.get("authorization") == f"Bearer {KEY}"  # the probe
    (remote,) = [m for m in store.models() if m.name == "fake"]
    assert remote.kind == "remote" and remote.dimension == DIM and not remote.active

    # The daemon fills it in the background: each chunk gets the server's vector.
    _worker(settings, store, embedders).run(once=True)
    with psycopg.connect(database) as conn:
        got = _vectors(conn, "fake")
        assert sorted(got) == sorted(texts)
        for text, vector in got.items():
            assert np.abs(vector - provider.vector(text)).max() < 1e-6
        details = [
            r[0]["provider"]
            for r in conn.execute(
                "SELECT detail FROM events WHERE kind = 'model_batch' "
                "AND detail ->> 'model' = 'fake'"
            ).fetchall()
        ]
        tokens = sum(provider.prompt_tokens(t) for t in texts)
        assert sum(d["prompt_tokens"] for d in details) == tokens
        assert sum(d["cost"] for d in details) == pytest.approx(tokens * 0.02 / 1e6)
        assert all(d["deferrals"] == 0 and d["retries"] == 0 for d in details)
        status = conn.execute("SELECT * FROM indexer_model_status WHERE model = 'fake'").fetchone()
        assert status is not None

    store.activate_model("fake")
    with Indexer(settings) as ix:
        hits = ix.search(texts[7], k=3)
        assert hits[0].content == texts[7] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        # New text is written with the active remote model first, then queued for the
        # local one: both have it after one pass.
        store.insert_chunks(["a note written after the switch"], ["{}"])
        _worker(settings, store, embedders).run(once=True)
        assert ix.search("a note written after the switch", k=1)[0].score == pytest.approx(
            1.0, abs=1e-5
        )
        store.activate_model("all-MiniLM-L6-v2")  # the rollback: instant
        assert ix.search(texts[7], k=1)[0].content == texts[7]
    with psycopg.connect(database) as conn:
        (completed,) = (
            conn.execute(
                "SELECT detail FROM events WHERE kind = 'batch_completed' "
                "AND detail ->> 'model' = 'fake'"
            ).fetchone()
            or ()
        )
        assert completed["provider"]["requests"] == 1
        assert completed["provider"]["prompt_tokens"] == provider.prompt_tokens(
            "a note written after the switch"
        )
        (row,) = [r for r in store.model_status() if r["model"] == "fake"]
        assert row["kind"] == "remote" and row["provider_tokens"] > tokens
        assert row["cost"] > 0 and row["away_since"] is None
        recorded = _everything_recorded(conn)
    with serve(settings, database, embedder) as api:
        store.activate_model("fake")
        api.client.post("/search", json={"query": texts[3], "k": 1}).raise_for_status()
        recorded += api.client.get("/health").text + api.client.get("/metrics").text
        recorded += api.client.get("/models").text
        # The indexer's own /v1/embeddings serves the models that run here only: it
        # passes no text (nor cost) on to a remote model's server.
        for named in ({}, {"model": "fake"}):
            refused = api.client.post("/v1/embeddings", json={"input": "x", **named})
            assert refused.status_code == 400 and "remote model" in refused.text
        listed = api.client.get("/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["all-MiniLM-L6-v2"]
        store.activate_model("all-MiniLM-L6-v2")
    # The key: sent to the server, stored, shown and logged nowhere.
    assert KEY not in recorded
    assert KEY not in caplog.text
    assert "FAKE_PROVIDER_KEY" in json.dumps(remote.record)


def test_a_busy_or_down_server_costs_no_row_an_attempt_and_loses_nothing(
    settings: Settings, store: Store, embedders: Embedders, provider: FakeProvider, database: str
) -> None:
    register_remote(store, "fake", _config(provider))
    store.activate_model("fake")  # no chunk yet: nothing is missing
    texts = [f"queued while the server struggles {i}" for i in range(24)]
    store.insert_chunks(texts, ["{}"] * len(texts))
    # Every third request is deferred (429, Retry-After: 1); then five server errors in a
    # row: more than the retries, an outage; then the server answers again.
    provider.throttle_every = 3
    provider.script(*[Fault("status", status=500)] * 5)  # the first request and its 4 retries
    worker = _worker(dataclasses.replace(settings, batch_size=8), store, embedders)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        with psycopg.connect(database, autocommit=True) as conn:

            def drained() -> bool:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE state = 'embedded'), "
                    "max(attempts), count(*) FILTER (WHERE state = 'failed') FROM chunks"
                ).fetchone()
                assert row is not None and row[1] == 0 and row[2] == 0, row
                return bool(row[0] == len(texts))

            assert wait_until(drained, timeout=120)
    finally:
        worker.stop()
        thread.join(60)
    with psycopg.connect(database) as conn:
        got = _vectors(conn, "fake")
        for text in texts:
            assert np.abs(got[text] - provider.vector(text)).max() < 1e-6
        (away,) = (
            conn.execute("SELECT detail FROM events WHERE kind = 'provider_away'").fetchone() or ()
        )
        assert away["model"] == "fake" and away["reason"] == "ProviderUnavailable"
        assert "500" in away["error"]
        providers = [
            r[0]["provider"]
            for r in conn.execute(
                "SELECT detail FROM events WHERE kind = 'batch_completed'"
            ).fetchall()
        ]
        assert sum(p["deferrals"] for p in providers) > 0
        assert conn.execute(
            "SELECT count(*) FROM events WHERE kind = 'batch_failed'"
        ).fetchone() == (0,)
    # Served after the outage: the status no longer says the server is away.
    (row,) = store.model_status()[-1:]
    assert row["model"] == "fake" and row["away_since"] is None


def test_bad_answers_write_nothing_and_a_refused_input_fails_alone(
    settings: Settings, store: Store, embedders: Embedders, provider: FakeProvider, database: str
) -> None:
    register_remote(store, "fake", _config(provider))
    store.activate_model("fake")
    texts = ["a fine text", "another fine text", "this one has <refuse-me> inside"]
    store.insert_chunks(texts, ["{}"] * len(texts))
    provider.script(Fault("wrong_dimension"), Fault("nan"), Fault("base64"))
    quick = dataclasses.replace(settings, max_attempts=5)
    for _ in range(3):  # three bad answers: three failed attempts, nothing written
        _worker(quick, store, embedders).run(once=True)
        with psycopg.connect(database) as conn:
            assert _vectors(conn, "fake") == {}
        _retry_now(database)
    _worker(quick, store, embedders).run(once=True)
    with psycopg.connect(database) as conn:
        got = _vectors(conn, "fake")
        assert sorted(got) == ["a fine text", "another fine text"]
        state, error = (
            conn.execute(
                "SELECT state, last_error FROM chunks WHERE content LIKE '%%refuse-me%%'"
            ).fetchone()
            or ()
        )
        assert state in ("pending", "failed") and "<refuse-me>" not in error
        assert "refuse" in error.lower() or "400" in error
        errors = [
            r[0] for r in conn.execute("SELECT error FROM events WHERE kind = 'batch_failed'")
        ]
        assert any("dimension" in e for e in errors)


def _retry_now(database: str) -> None:
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE chunks SET retry_at = NULL WHERE state = 'pending'")


def test_the_indexer_serves_another_indexer_its_model(
    settings: Settings, store: Store, embedder: Embedder, embedders: Embedders, database: str
) -> None:
    """A remote model pointed at another daemon's /v1/embeddings: its vectors are the
    local model's (to /v1's seven decimals), and switching to it and back serves search."""
    texts = [f"served over http {i}: {['a lake', 'a forest', 'a road'][i % 3]}" for i in range(12)]
    store.insert_chunks(texts, ["{}"] * len(texts))
    _worker(settings, store, embedders).run(once=True)
    with serve(settings, database, embedder) as api:
        config = RemoteConfig(
            url=f"{api.server.url}/v1", model="all-MiniLM-L6-v2", dimension=embedder.dim
        )
        register_remote(store, "minilm-over-http", config)
        _worker(settings, store, embedders).run(once=True)
        with psycopg.connect(database) as conn:
            got = _vectors(conn, "minilm-over-http")
        expected = embedder.embed(texts)
        for text, vector in zip(texts, expected, strict=True):
            assert np.abs(got[text] - vector).max() < 1e-6
        with Indexer(settings) as ix:
            before = [h.id for h in ix.search("a forest", k=4)]
            store.activate_model("minilm-over-http")
            assert [h.id for h in ix.search("a forest", k=4)] == before
            store.activate_model("all-MiniLM-L6-v2")


def test_registering_refuses_what_cannot_work_with_one_line(
    settings: Settings,
    store: Store,
    embedders: Embedders,
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(IndexerError, match="dimension") as wrong:
        register_remote(store, "fake", dataclasses.replace(_config(provider), dimension=DIM * 2))
    assert "\n" not in str(wrong.value)
    monkeypatch.delenv("FAKE_PROVIDER_KEY")
    with pytest.raises(ConfigurationError, match="FAKE_PROVIDER_KEY"):
        register_remote(store, "fake", _config(provider))
    assert [m.name for m in store.models()] == ["all-MiniLM-L6-v2"]
    # Without the probe it is registered; a daemon without the key leaves it to others.
    register_remote(store, "fake", _config(provider), probe=False)
    assert embedders.loader(store.models()[-1]) is None


def test_the_downgrade_needs_the_remote_models_dropped(
    settings: Settings, store: Store, provider: FakeProvider, database: str
) -> None:
    register_remote(store, "fake", _config(provider))
    with pytest.raises(Exception, match="remote models are registered"):
        migrate.downgrade(database, "public", "0009")
    store.drop_model("fake")
    migrate.downgrade(database, "public", "0009")
    migrate.upgrade(database, "public")
    assert [m.kind for m in store.models()] == ["local"]


def test_a_sources_documents_are_embedded_by_the_remote_model_and_their_cost_recorded(
    settings: Settings, store: Store, embedders: Embedders, provider: FakeProvider, database: str
) -> None:
    register_remote(store, "fake", _config(provider))
    store.activate_model("fake")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO notes VALUES (1, 'a first note about lakes'), "
            "(2, 'a second note about roads'), (3, 'a third one, <refuse-me> please')"
        )
    store.add_source("notes", text=["body"])
    _worker(settings, store, embedders).run(once=True)
    with psycopg.connect(database) as conn:
        got = _vectors(conn, "fake")
        assert sorted(got) == ["a first note about lakes", "a second note about roads"]
        for text, vector in got.items():
            assert np.abs(vector - provider.vector(text)).max() < 1e-6
        details = [
            r[0]
            for r in conn.execute(
                "SELECT detail FROM events WHERE kind = 'batch_completed' AND detail ? 'documents'"
            )
        ]
        assert sum(d["provider"]["prompt_tokens"] for d in details) == sum(
            provider.prompt_tokens(t) for t in got
        )
        (error,) = (
            conn.execute(
                "SELECT last_error FROM source_documents WHERE state IN ('pending', 'failed')"
            ).fetchone()
            or ()
        )
        assert "refuse" in error.lower() or "400" in error
    # Each source's share of what the server reported, in `indexer status`'s source line.
    (notes,) = [r for r in store.source_status() if r["source_table"] == "public.notes"]
    assert notes["provider_tokens"] == sum(provider.prompt_tokens(t) for t in got)
    assert float(notes["cost"]) == pytest.approx(notes["provider_tokens"] * 0.02 / 1e6)
    assert "server tokens in 24 h, cost 0.0000" in source_line(notes)


def test_a_remote_fill_held_up_by_its_server_does_not_hold_up_new_rows(
    settings: Settings, store: Store, embedders: Embedders, provider: FakeProvider, database: str
) -> None:
    """The fill of a remote model whose server defers every request gives its claim back
    after BACKGROUND_PATIENCE_S (not the embedder's two minutes) and pauses, so the
    active local model's new rows are embedded meanwhile; no attempt is counted."""
    texts = [f"older text {i}" for i in range(10)]
    store.insert_chunks(texts, ["{}"] * len(texts))
    _worker(settings, store, embedders).run(once=True)
    register_remote(store, "fake", _config(provider))
    provider.script(*[Fault("throttle", retry_after="1")] * 200)
    worker = _worker(settings, store, embedders)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        with psycopg.connect(database, autocommit=True) as conn:

            def away() -> bool:
                row = conn.execute(
                    "SELECT count(*) FROM events WHERE kind = 'provider_away'"
                ).fetchone()
                return bool(row and row[0] > 0)

            assert wait_until(away, timeout=60)
            (new_id,) = store.insert_chunks(["written while the server is busy"], ["{}"])

            def embedded() -> bool:
                row = conn.execute("SELECT state FROM chunks WHERE id = %s", (new_id,)).fetchone()
                return bool(row and row[0] == "embedded")

            # Well within the embedder's own patience (120 s): the fill did not hold it.
            assert wait_until(embedded, timeout=60)
            (detail,) = (
                conn.execute("SELECT detail FROM events WHERE kind = 'provider_away'").fetchone()
                or ()
            )
            assert detail["model"] == "fake" and detail["reason"] == "ProviderBusy"
            row = conn.execute(
                "SELECT max(attempts), bool_or(failed) FROM model_pending"
            ).fetchone()
            assert row == (0, False)
    finally:
        worker.stop()
        thread.join(60)


def test_the_command_registers_a_remote_model_or_says_in_one_line_why_not(
    database: str, model_cache: Path, provider: FakeProvider
) -> None:
    env = cli_env(database, model_cache, FAKE_PROVIDER_KEY=KEY)
    common = [
        "models",
        "add-remote",
        provider.url,
        "--name",
        "fake",
        "--provider-model",
        "fake-embed",
        "--api-key-env",
        "FAKE_PROVIDER_KEY",
        "--price-per-million",
        "0.02",
    ]
    wrong = run_cli([*common, "--dimension", str(DIM * 2)], env)
    assert wrong.returncode != 0 and len(wrong.stderr.strip().splitlines()) == 1
    assert "dimension" in wrong.stderr and KEY not in wrong.stderr + wrong.stdout
    added = run_cli([*common, "--dimension", str(DIM)], env)
    assert added.returncode == 0, added.stderr
    assert "added remote model fake" in added.stdout
    listed = run_cli(["models", "list", "--json"], env)
    (fake,) = [json.loads(line) for line in listed.stdout.splitlines() if '"fake"' in line]
    assert fake["kind"] == "remote" and fake["dimension"] == DIM
    assert KEY not in listed.stdout
