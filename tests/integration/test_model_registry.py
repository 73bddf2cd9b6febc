"""The model registry (migration 0009): a second model added beside the first, filled in
the background, activated in one transaction, rolled back, dropped; search by model;
a model changed on disk refused; privileges of the new tables."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from indexer.app import Indexer
from indexer.db import migrate
from indexer.embedding import Embedder, TextEmbedder, Tokenized
from indexer.embedding.background import NICE, Background, thread_nice
from indexer.embedding.describe import describe_folder
from indexer.embedding.wrappers import EmbedderWrapper
from indexer.exceptions import InvalidInput, ModelChanged
from indexer.registry import Embedders, reconcile
from indexer.settings import Settings
from indexer.store import Store
from indexer.store.models import DEFER_INDEX_AT, RegisteredModel
from indexer.worker import Worker

from ..helpers import wait_until
from .test_http import samples, serve

FIXTURES = Path(__file__).parent.parent / "fixtures" / "models"


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    with Store(settings.database_url or "", settings.schema) as s:
        yield s


@pytest.fixture
def second(model_cache: Path) -> Embedder:
    """A tiny BERT with CLS pooling and a query prefix: another dimension, other vectors."""
    return Embedder(record=describe_folder(FIXTURES / "bert-cls"), cache_dir=model_cache)


def _worker(settings: Settings, store: Store, embedder: Embedder) -> Worker:
    reconcile(store.models(), embedder, store)
    return Worker(settings, store, embedder, load_model=Embedders(settings, embedder).loader)


def _status(store: Store) -> dict[str, dict[str, object]]:
    return {str(r["model"]): r for r in store.model_status()}


def _add(store: Store, second: Embedder, *, defer_index_at: int = DEFER_INDEX_AT) -> int:
    return store.add_model(
        "tiny-cls",
        dimension=second.dim,
        record=second.record.as_dict(),
        fingerprint=second.record.fingerprint,
        defer_index_at=defer_index_at,
    )


def test_switch_fill_activate_rollback_drop(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, database: str
) -> None:
    texts = [f"note {i} about the {['sea', 'mountains', 'city'][i % 3]}" for i in range(30)]
    store.insert_chunks(texts, ["{}"] * len(texts))
    _worker(settings, store, embedder).run(once=True)
    (first,) = store.models()
    assert first.active and first.in_column and first.fingerprint == embedder.record.fingerprint

    _add(store, second)
    with pytest.raises(InvalidInput, match="lacks vectors for 30 of 30 embedded chunks"):
        store.activate_model("tiny-cls")

    # The daemon fills the new model in the background; search keeps the first one.
    _worker(settings, store, embedder).run(once=True)
    status = _status(store)
    assert status["tiny-cls"]["missing"] == 0 and status["tiny-cls"]["covered"] == 30
    query = embedder.embed_queries(["the sea"])[0]
    assert len(store.search(query, 5)) == 5

    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT c.content, v.embedding::real[] FROM model_2_vectors v "
            "JOIN chunks c ON c.id = v.chunk_id ORDER BY c.id"
        ).fetchall()
    assert len(rows) == 30
    expected = second.embed([r[0] for r in rows])
    assert np.allclose(np.array([r[1] for r in rows]), expected, atol=1e-6)

    assert store.activate_model("tiny-cls") == 0
    small = second.embed_queries(["the sea"])[0]
    hits = store.search(small, 5)  # the active model: tiny-cls
    assert len(hits) == 5
    with pytest.raises(psycopg.errors.DataException, match="has 384 dimensions"):
        store.search(query, 5)
    assert [h.id for h in store.search(query, 5, model=first.name)]

    # New text: written with the active model first, then the other one.
    store.insert_chunks(["a new note about rivers"], ["{}"])
    _worker(settings, store, embedder).run(once=True)
    status = _status(store)
    assert status["tiny-cls"]["missing"] == 0 and status[first.name]["missing"] == 0
    # An edit: the old vectors are never served for the new text.
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE chunks SET content = 'about deserts' WHERE id = 1")
    assert 1 not in {h.id for h in store.search(small, 31)}
    assert _status(store)["tiny-cls"]["missing"] == 0  # pending, not embedded: not counted
    _worker(settings, store, embedder).run(once=True)
    assert 1 in {h.id for h in store.search(small, 31)}
    assert 1 in {h.id for h in store.search(query, 31, model=first.name)}

    # Rollback is instant: the first model was kept current.
    assert store.activate_model(first.name) == 0
    assert len(store.search(query, 5)) == 5
    with pytest.raises(InvalidInput, match="is active"):
        store.drop_model(first.name)
    store.drop_model("tiny-cls")
    assert [m.name for m in store.models()] == [first.name]
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('model_2_vectors')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM model_pending").fetchone() == (0,)


def test_forced_switch_serves_what_is_there(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder
) -> None:
    store.insert_chunks(["one", "two", "three"], ["{}"] * 3)
    _worker(settings, store, embedder).run(once=True)
    _add(store, second)
    assert store.activate_model("tiny-cls", force=True) == 3
    small = second.embed_queries(["one"])[0]
    assert store.search(small, 3) == []  # nothing of the new model yet: empty, never mixed
    _worker(settings, store, embedder).run(once=True)  # the daemon now runs tiny-cls first
    assert len(store.search(small, 3)) == 3


def test_a_model_changed_on_disk_is_refused(
    settings: Settings, store: Store, model_cache: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(FIXTURES / "bert-cls", folder)
    record = describe_folder(folder)
    store.add_model(
        "tiny", dimension=record.dimension, record=record.as_dict(), fingerprint=record.fingerprint
    )
    config = folder / "config_sentence_transformers.json"
    prompts = json.loads(config.read_text())
    prompts["prompts"]["query"] = "query: "
    config.write_text(json.dumps(prompts))  # another query prefix: other vectors
    changed = Embedder(record=describe_folder(folder), cache_dir=model_cache)
    with pytest.raises(ModelChanged, match="restore the files"):
        reconcile(store.models(), changed, store)


def test_registered_names_and_duplicates(store: Store, second: Embedder) -> None:
    _add(store, second)
    with pytest.raises(InvalidInput, match="already registered, as tiny-cls"):
        store.add_model(
            "again",
            dimension=second.dim,
            record=second.record.as_dict(),
            fingerprint=second.record.fingerprint,
        )
    with pytest.raises(InvalidInput, match="not a model name"):
        store.add_model(" bad\nname", dimension=8, record={}, fingerprint="x")


def test_upgrade_keeps_every_vector_and_downgrade_needs_the_first_model(
    settings: Settings, embedder: Embedder, second: Embedder, database: str
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE ROLE registry_reader")
        try:
            conn.execute("SELECT grant_search('registry_reader')")
            migrate.downgrade(database, "public", "0008")
            # A store as 0008 left it: rows embedded, their vectors cached.
            for text in ("kept vector", "another"):
                vector = str(embedder.embed([text])[0].tolist())
                conn.execute(
                    "INSERT INTO chunks (content, embedding, embedding_model)"
                    " VALUES (%s, %s::vector, %s)",
                    (text, vector, embedder.name),
                )
                conn.execute(
                    "INSERT INTO vector_cache (model, hash, embedding)"
                    " VALUES (%s, sha256(convert_to(%s, 'UTF8')), %s::vector)",
                    (embedder.cache_key, text, vector),
                )
            before = conn.execute(
                "SELECT id, embedding::text, embedding_model FROM chunks ORDER BY id"
            ).fetchall()
            cached = conn.execute("SELECT count(*) FROM vector_cache").fetchone()
            migrate.upgrade(database, "public")
            after = conn.execute(
                "SELECT id, embedding::text, embedding_model FROM chunks ORDER BY id"
            ).fetchall()
            assert after == before and all(r[1] for r in after)
            assert conn.execute("SELECT count(*) FROM vector_cache").fetchone() == cached
            with Store(database, "public") as store:
                (first,) = store.models()
                assert (first.name, first.active, first.fingerprint) == (
                    embedder.name,
                    True,
                    None,
                )
                reconcile(store.models(), embedder, store)  # adopted by its first daemon
                assert store.models()[0].fingerprint == embedder.record.fingerprint
                _add(store, second)
                query = embedder.embed_queries(["kept vector"])[0]
                # A reader that could search before still can, by every model.
                conn.execute("SET ROLE registry_reader")
                hits = conn.execute(
                    "SELECT id FROM search_chunks(%s::vector, 2)", (str(query.tolist()),)
                ).fetchall()
                conn.execute("RESET ROLE")
                assert len(hits) == 2
                store.activate_model("tiny-cls", force=True)
                with pytest.raises(
                    psycopg.errors.ObjectNotInPrerequisiteState, match="activate the model"
                ):
                    migrate.downgrade(database, "public", "0008")
                store.activate_model(first.name)
            migrate.downgrade(database, "public", "0008")
            assert conn.execute("SELECT to_regclass('model_2_vectors')").fetchone() == (None,)
            conn.execute("SET ROLE registry_reader")
            hits = conn.execute(
                "SELECT id FROM search_chunks(%s::vector, 2)", (str(query.tolist()),)
            ).fetchall()
            conn.execute("RESET ROLE")
            assert len(hits) == 2
            migrate.upgrade(database, "public")
        finally:
            conn.execute("RESET ROLE")
            conn.execute("DROP OWNED BY registry_reader")
            conn.execute("DROP ROLE registry_reader")


def test_a_halfvec_model_is_filled_from_the_cache_and_searched(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, database: str
) -> None:
    store.insert_chunks(["one", "two", "three"], ["{}"] * 3)
    _add(store, second)
    _worker(settings, store, embedder).run(once=True)
    half = store.add_model(
        "tiny-cls-halfvec",
        dimension=second.dim,
        record=second.record.as_dict(),
        fingerprint=second.record.fingerprint,
        halfvec=True,
    )
    with psycopg.connect(database) as conn:
        cached = conn.execute("SELECT count(*) FROM vector_cache").fetchone()
    _worker(settings, store, embedder).run(once=True)
    with psycopg.connect(database) as conn:
        # The same model's vectors came from the cache: nothing was embedded again.
        assert conn.execute("SELECT count(*) FROM vector_cache").fetchone() == cached
        kind = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname = 'embedding'",
            (f"model_{half}_vectors",),
        ).fetchone()
        assert kind == (f"halfvec({second.dim})",)
        stored = conn.execute(
            f"SELECT c.content, v.embedding::vector::real[] FROM model_{half}_vectors v"  # noqa: S608
            " JOIN chunks c ON c.id = v.chunk_id ORDER BY c.id"
        ).fetchall()
    expected = second.embed([r[0] for r in stored])
    assert np.allclose(np.array([r[1] for r in stored]), expected, atol=2e-3)
    query = second.embed_queries(["two"])[0]
    full = [h.id for h in store.search(query, 3, model="tiny-cls")]
    assert [h.id for h in store.search(query, 3, model="tiny-cls-halfvec")] == full


def test_a_searching_role_searches_every_model_and_changes_none(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, database: str
) -> None:
    store.insert_chunks(["one", "two", "three"], ["{}"] * 3)
    _add(store, second)
    _worker(settings, store, embedder).run(once=True)
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE ROLE model_reader")
        try:
            conn.execute("SELECT grant_search('model_reader')")
            conn.execute("SET ROLE model_reader")
            small = str(second.embed_queries(["two"])[0].tolist())
            assert len(conn.execute("SELECT * FROM similar_chunks(1, 2)").fetchall()) == 2
            assert (
                len(conn.execute("SELECT * FROM similar_chunks(1, 2, 'tiny-cls')").fetchall()) == 2
            )
            hits = conn.execute(
                "SELECT id FROM search_chunks(%s::vector, 3, '{}', 'tiny-cls')", (small,)
            ).fetchall()
            assert len(hits) == 3
            assert len(conn.execute("SELECT chunk_id FROM model_2_vectors").fetchall()) == 3
            # The registry is readable: a search opens the model it names from its record.
            assert len(conn.execute("SELECT record FROM models").fetchall()) == 2
            for call in (
                "SELECT activate_model('tiny-cls', true)",
                "SELECT drop_model('tiny-cls')",
                "SELECT fill_model(2, 10)",
                "SELECT add_model('x', 3, '{}', 'f')",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(call)
        finally:
            conn.execute("RESET ROLE")
            conn.execute("DROP OWNED BY model_reader")
            conn.execute("DROP ROLE model_reader")


# --- found by the model-switch bench (indexer/bench/switch.py) ---------------------------


def test_an_idle_daemon_starts_a_new_models_fill_without_waiting_for_a_poll(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder
) -> None:
    store.insert_chunks(["one", "two", "three"], ["{}"] * 3)
    # Polling is only a fallback (README): NOTIFY wakes the daemon for new work.
    idle = dataclasses.replace(settings, poll_interval=3600)
    with Store(settings.database_url or "", settings.schema, pool_size=4) as own:
        worker = _worker(idle, own, embedder)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert wait_until(lambda: _status(store)[embedder.name]["covered"] == 3, 30)
            _add(store, second)
            assert wait_until(lambda: _status(store)["tiny-cls"]["missing"] == 0, 10)
        finally:
            worker.stop()
            thread.join(30)


def test_a_role_that_may_only_search_can_search_through_python(
    settings: Settings, store: Store, embedder: Embedder, database: str
) -> None:
    store.insert_chunks(["a note about the sea", "a note about the city"], ["{}"] * 2)
    _worker(settings, store, embedder).run(once=True)
    name = "r_" + uuid.uuid4().hex[:12]
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        try:
            admin.execute("SELECT grant_search(%s)", (name,))
            reader = dataclasses.replace(settings, database_url=make_conninfo(database, user=name))
            with psycopg.connect(reader.database_url or "") as c:  # SQL search works
                query = embedder.embed_queries(["the sea"])[0]
                found = c.execute(
                    "SELECT content FROM search_chunks(%s::vector, 1)", (str(query.tolist()),)
                ).fetchall()
            assert found == [("a note about the sea",)]
            with Indexer(reader, embedder=embedder) as ix:
                hits = ix.search("the sea", k=1)
            assert [h.content for h in hits] == ["a note about the sea"]
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


class Gate(EmbedderWrapper):
    """A model whose calls each wait until the test lets one through (``open``), or
    until it lets every call through (``free``)."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner)
        self.arrived = 0  # calls that reached the gate
        self.waiting = 0  # calls held at it now
        self._passes = threading.Semaphore(0)
        self._free = threading.Event()

    def open(self) -> None:
        self._passes.release()

    def free(self) -> None:
        self._free.set()
        self._passes.release()

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        self.arrived += 1
        self.waiting += 1
        try:
            if not self._free.is_set() and not self._passes.acquire(timeout=60):
                raise AssertionError("the test never let this model call through")
        finally:
            self.waiting -= 1
        return self.inner.embed_tokenized(tokenized)


def _one_call_through(gate: Gate, done: Callable[[], bool]) -> None:
    """Let one held model call through; back once the next one is held, or ``done``."""
    arrived = gate.arrived
    gate.open()
    assert wait_until(lambda: gate.arrived > arrived or done(), 30)


def test_a_row_written_during_a_fill_claim_is_embedded_before_that_claim_is_finished(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, database: str
) -> None:
    """The fill yields between two slices of its claim when new text is notified: the
    slices done are written, the rest given back, the new row embedded, then the fill
    goes on; every chunk still gets the new model's vector once."""
    store.insert_chunks([f"old note {i} about the sea" for i in range(30)], ["{}"] * 30)
    idle = dataclasses.replace(settings, poll_interval=3600)  # only NOTIFY wakes it
    gate = Gate(second)
    with Store(settings.database_url or "", settings.schema, pool_size=4) as own:
        reconcile(own.models(), embedder, own)
        load = Embedders(idle, embedder).loader

        def loader(model: RegisteredModel) -> TextEmbedder | None:
            return gate if model.name == "tiny-cls" else load(model)

        worker = Worker(idle, own, embedder, load_model=loader)
        worker.fill.slice_seconds = 0.0  # after its first slice, one text a slice
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert wait_until(lambda: _status(store)[embedder.name]["covered"] == 30, 30)
            _add(store, second)
            assert wait_until(lambda: gate.waiting == 1, 30)  # the claim of 30's first slice
            (new,) = store.insert_chunks(["a note written during the fill"], ["{}"])
            passes = 0
            while not _embedded(database, new):  # a slice at a time until the row is served
                _one_call_through(gate, lambda: _embedded(database, new))
                passes += 1
            assert passes < 10 and worker.fill.yielded >= 1
            assert wait_until(lambda: gate.waiting == 1, 30)  # the fill goes on, held again
            assert _vectors(database) < 30  # the claim's other chunks still lack theirs
            gate.free()
            assert wait_until(lambda: _status(store)["tiny-cls"]["missing"] == 0, 30)
        finally:
            gate.free()
            worker.stop()
            thread.join(30)
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT c.content, v.embedding::real[] FROM chunks c"
            " JOIN model_2_vectors v ON v.chunk_id = c.id AND v.content_version = c.content_version"
            " ORDER BY c.id"
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM model_pending").fetchone() == (0,)
        written = conn.execute(
            "SELECT sum(row_count) FROM events WHERE kind = 'model_batch'"
        ).fetchone()
    assert len(rows) == 31 and written == (31,)  # each chunk's vector written once
    expected = second.embed([r[0] for r in rows])
    assert np.allclose(np.array([r[1] for r in rows]), expected, atol=1e-6)


def _embedded(database: str, chunk_id: int) -> bool:
    """The chunk has the active model's vector (it is searchable)."""
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT state FROM chunks WHERE id = %s", (chunk_id,)).fetchone()
    return row == ("embedded",)


def _vectors(database: str) -> int:
    """Vectors the second model has."""
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT count(*) FROM model_2_vectors").fetchone()
    return int(row[0]) if row is not None else 0


def test_metrics_give_each_models_coverage_and_eta(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder
) -> None:
    store.insert_chunks([f"note {i} about the sea" for i in range(12)], ["{}"] * 12)
    _worker(settings, store, embedder).run(once=True)
    _add(store, second)
    small = dataclasses.replace(settings, batch_size=4, claim_size=4)
    filling = _worker(small, store, embedder)
    filling.models.refresh(force=True)
    while filling.fill.written == 0:  # its range queued, then one claim of 4
        assert filling.fill.step()

    def gauges(text: str) -> dict[tuple[str, str], float]:
        return {
            (name, dict(labels)["model"]): value
            for (name, labels), value in samples(text).items()
            if name
            in (
                "indexer_model_coverage_ratio",
                "indexer_model_eta_seconds",
                "indexer_model_index_ready",
            )
        }

    with serve(settings, settings.database_url or "", embedder) as api:
        values = gauges(api.client.get("/metrics").text)
        assert values == {
            ("indexer_model_coverage_ratio", embedder.name): 1.0,
            ("indexer_model_eta_seconds", embedder.name): 0.0,
            ("indexer_model_coverage_ratio", "tiny-cls"): pytest.approx(4 / 12),
            # 8 missing at the 4 a minute its background work wrote in the last minute
            ("indexer_model_eta_seconds", "tiny-cls"): pytest.approx(120.0),
            ("indexer_model_index_ready", embedder.name): 1.0,
            ("indexer_model_index_ready", "tiny-cls"): 1.0,  # 12 chunks: built with its table
        }
        _worker(settings, store, embedder).run(once=True)  # the rest of the fill
        # Read again once a minute at most: until then, the last read's figures.
        assert gauges(api.client.get("/metrics").text) == values
        coverage = api.server.app.state.indexer.coverage
        coverage.every = 0.0
        values = gauges(api.client.get("/metrics").text)
        assert values[("indexer_model_coverage_ratio", "tiny-cls")] == 1.0
        assert values[("indexer_model_eta_seconds", "tiny-cls")] == 0.0
        store.drop_model("tiny-cls")
        assert {m for _, m in gauges(api.client.get("/metrics").text)} == {embedder.name}


def test_a_stop_mid_fill_claim_writes_the_slices_done_and_gives_the_rest_back(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, database: str
) -> None:
    store.insert_chunks([f"old note {i} about the sea" for i in range(30)], ["{}"] * 30)
    _worker(settings, store, embedder).run(once=True)
    _add(store, second)
    gate = Gate(second)
    with Store(settings.database_url or "", settings.schema, pool_size=4) as own:
        load = Embedders(settings, embedder).loader

        def loader(model: RegisteredModel) -> TextEmbedder | None:
            return gate if model.name == "tiny-cls" else load(model)

        worker = Worker(settings, own, embedder, load_model=loader)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert wait_until(lambda: gate.waiting == 1, 30)  # the first slice of 4, held
            worker.stop()
        finally:
            gate.free()
            thread.join(30)
    assert not thread.is_alive()
    with psycopg.connect(database) as conn:
        pending = conn.execute(
            "SELECT count(*), count(claimed_by), max(attempts) FROM model_pending"
        ).fetchone()
    assert _vectors(database) == 4 and pending == (26, 0, 0)  # back in the queue, as they were


def test_a_model_opened_beside_the_settings_one_does_not_spin(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder
) -> None:
    """The second model's session lets its idle threads sleep (session.py says why); the
    daemon's own model keeps ONNX Runtime's default."""
    _add(store, second)
    (_, added) = store.models()
    opened = Embedders(settings, embedder).get(added)
    assert isinstance(opened, Embedder) and opened is not embedder

    def spinning(e: Embedder) -> str:
        options = e._model._session.get_session_options()
        try:
            return str(options.get_session_config_entry("session.intra_op.allow_spinning"))
        except Exception:  # not set: ONNX Runtime's default, which spins
            return "default"

    assert spinning(opened) == "0"
    assert spinning(embedder) == "default"
    # A searching process's own model sleeps too (load_query_embedder says why).
    searching = Indexer(settings).embedder
    assert isinstance(searching, Embedder) and searching.name == embedder.name
    assert spinning(searching) == "0"


class Niceness(EmbedderWrapper):
    """A model that notes the nice value of each thread that calls it, and counts the
    texts it embeds."""

    def __init__(self, inner: TextEmbedder) -> None:
        super().__init__(inner)
        self.seen: set[int] = set()
        self.texts = 0

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        self.seen.add(thread_nice())
        self.texts += len(tokenized.lengths)
        return self.inner.embed_tokenized(tokenized)


def _threads_at(nice: int) -> set[int]:
    """This process's threads at that nice value (Linux keeps one per thread)."""
    found = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[16]) == nice:
                found.add(int(task.name))
    return found


def test_a_daemon_fills_a_model_at_the_lowest_cpu_priority_and_embeds_new_rows_at_its_own(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder
) -> None:
    """The added model's session starts its threads at nice 19 and its fill calls run
    there; the active model's rows are embedded at the daemon's own priority."""
    store.insert_chunks([f"old note {i} about the sea" for i in range(6)], ["{}"] * 6)
    _add(store, second)
    (_, added) = store.models()
    mine = thread_nice()
    threaded = dataclasses.replace(settings, threads=2)  # a session that starts a pool
    with Background() as background:
        before = _threads_at(NICE)
        opened = Embedders(threaded, embedder, background).get(added)
        assert isinstance(opened, Embedder)
        # The background thread and the session's intra-op pool, both at nice 19.
        assert len(_threads_at(NICE) - before) >= 2
        active, filled = Niceness(embedder), Niceness(opened)

        def loader(model: RegisteredModel) -> TextEmbedder | None:
            return filled if model.name == "tiny-cls" else active

        reconcile(store.models(), embedder, store)
        worker = Worker(settings, store, active, load_model=loader, background=background)
        worker.run(once=True)
    assert _status(store)["tiny-cls"]["missing"] == 0
    assert active.seen == {mine} and filled.seen == {NICE}
    assert thread_nice() == mine


class HeldWrites(Store):
    """A real store whose fill writes each wait until the test lets them through."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held = threading.Event()  # a fill write is waiting
        self.go = threading.Event()

    def finish_model_work(self, *args: Any, **kwargs: Any) -> list[int]:
        self.held.set()
        if not self.go.wait(60):
            raise AssertionError("the test never let the fill's write through")
        return super().finish_model_work(*args, **kwargs)


def test_a_daemon_embeds_the_next_fill_claim_while_the_last_one_is_written(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, database: str
) -> None:
    """In a daemon (a background thread), a fill claim's write goes on while the next
    claim is embedded, and a new row is embedded meanwhile rather than wait behind the
    write; every vector is still written once, the model's own."""
    store.insert_chunks([f"old note {i} about the sea" for i in range(12)], ["{}"] * 12)
    _worker(settings, store, embedder).run(once=True)
    _add(store, second)
    small = dataclasses.replace(settings, batch_size=4, claim_size=4)
    counted = Niceness(second)
    own = HeldWrites(settings.database_url or "", settings.schema, pool_size=4)
    with own, Background() as background:
        load = Embedders(small, embedder).loader

        def loader(model: RegisteredModel) -> TextEmbedder | None:
            return counted if model.name == "tiny-cls" else load(model)

        worker = Worker(small, own, embedder, load_model=loader, background=background)
        thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
        thread.start()
        try:
            assert own.held.wait(30)  # the first claim's write, held
            # The next claim of 4 is embedded meanwhile (the first claim's 4 and more).
            assert wait_until(lambda: counted.texts >= 8, 30)
            assert _vectors(database) == 0
            # A new row does not wait behind the fill's write either.
            (new,) = store.insert_chunks(["a note written during the fill's write"], ["{}"])
            assert wait_until(lambda: _embedded(database, new), 30)
            assert _vectors(database) == 0
        finally:
            own.go.set()
            thread.join(60)
    assert not thread.is_alive()
    assert _status(store)["tiny-cls"]["missing"] == 0
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT c.content, v.embedding::real[] FROM chunks c"
            " JOIN model_2_vectors v ON v.chunk_id = c.id ORDER BY c.id"
        ).fetchall()
        written = conn.execute(
            "SELECT sum(row_count) FROM events WHERE kind = 'model_batch'"
        ).fetchone()
    assert len(rows) == 13 and written == (13,)
    assert np.allclose(
        np.array([r[1] for r in rows]), second.embed([r[0] for r in rows]), atol=1e-6
    )


def test_after_the_fill_yields_to_new_text_the_loop_takes_it_before_the_write_ends(
    settings: Settings, store: Store, embedder: Embedder, second: Embedder, database: str
) -> None:
    """A fill claim finished while the last one's write is in flight, and the fill gave
    way to new text rather than wait (its ``yield_to`` said so, consuming the notice).
    The loop's next step asks the active model's own work first: that must not wait for
    the write either, or the new text would wait behind it with no notice left to end
    the wait (a daemon once did, for as long as the write took)."""
    store.insert_chunks([f"old note {i} about the hills" for i in range(3)], ["{}"] * 3)
    _worker(settings, store, embedder).run(once=True)
    _add(store, second)
    one = dataclasses.replace(settings, batch_size=1, claim_size=1)
    own = HeldWrites(settings.database_url or "", settings.schema, pool_size=4)
    with own, Background() as background:
        load = Embedders(one, embedder).loader
        worker = Worker(one, own, embedder, load_model=load, background=background)
        fill = worker.fill
        try:
            worker.models.refresh(force=True)
            assert fill.step()  # the model's work queued
            assert fill.step()  # the first claim, its write held
            assert own.held.wait(30)
            fill.yield_to = lambda: True  # new text notified: the fill gives way
            assert fill.step()  # the second claim, embedded and waiting to be sent
            fill.yield_to = lambda: False  # the notice was consumed
            done = threading.Event()

            def active_step() -> None:
                fill.active_step()
                done.set()

            threading.Thread(target=active_step, daemon=True).start()
            assert done.wait(30), "the active model's step waited for the fill's write"
        finally:
            own.go.set()
            fill.close()
            worker.listener.close()
    assert _vectors(database) == 2  # both claims written, once
