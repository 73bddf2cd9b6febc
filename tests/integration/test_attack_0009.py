"""Attacks on the model registry (migration 0009), on the real server, as a searching
role, a writing role, an operator and a daemon racing them would.  Each test states what
must hold; a failing one demonstrates a defect (see the branch's report)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from indexer.app import Indexer
from indexer.db import migrate
from indexer.db.connect import Connection
from indexer.embedding import Embedder
from indexer.embedding.describe import describe_folder, packaged_folder
from indexer.exceptions import ModelNotFound
from indexer.registry import Embedders, reconcile
from indexer.settings import Settings
from indexer.store import Store
from indexer.store.models import BatchFigures
from indexer.worker import Worker

from .test_privileges import as_role, role, vector


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    with Store(settings.database_url or "", settings.schema) as s:
        yield s


def _add_small_model(conn: Connection, name: str = "m3", dimension: int = 3) -> int:
    """A model registered as `indexer models add` does (its record does not matter
    here: its vectors are written with the daemon's own function)."""
    row = conn.execute(
        "SELECT add_model(%s, %s, '{}'::jsonb, %s) AS id", (name, dimension, "fp-" + name)
    ).fetchone()
    assert row is not None
    return int(row["id"])


def _embedded_row(conn: Connection, content: str, axis: int = 0) -> int:
    """A row embedded by the first model (chunks.embedding)."""
    row = conn.execute(
        "INSERT INTO chunks (content, embedding) VALUES (%s, %s::vector) RETURNING id",
        (content, vector(axis)),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def _store_vectors(conn: Connection, model_id: int, chunk_id: int, vec: str) -> None:
    """The daemon's write of a model's vector, at the chunk's current version."""
    conn.execute(
        "SELECT store_model_vectors(%s, ARRAY[%s]::bigint[],"
        " ARRAY[(SELECT content_version FROM chunks WHERE id = %s)],"
        " ARRAY[%s::vector],"
        " ARRAY[(SELECT sha256(convert_to(content, 'UTF8')) FROM chunks WHERE id = %s)],"
        " NULL)",
        (model_id, chunk_id, chunk_id, vec, chunk_id),
    )


def _wait_for_lock_wait(conn: Connection, query_like: str, timeout: float = 20.0) -> None:
    """Until a backend running a query like ``query_like`` waits for a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s AND datname = current_database()",
            (query_like,),
        ).fetchone()
        if row is not None and row["n"] > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"no backend running {query_like!r} waited for a lock")


class _Background:
    """A call in a thread; its result or exception, once joined."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = call()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 30.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the background call did not finish"


# --- a role that may only search ------------------------------------------------------


def test_a_searching_role_can_search_through_the_python_api(
    conn: Connection, database: str, embedder: Embedder, model_cache: Path
) -> None:
    """roles.md: every way in (CLI, Python, HTTP) searches as the role it connects as,
    and grant_search is what a searching role needs.  Indexer.search reads the registry
    (store.models(): SELECT record, fingerprint FROM models), whose record and
    fingerprint columns grant_search does not grant."""
    sea = embedder.embed(["the sea is calm today"])[0]
    conn.execute(
        "INSERT INTO chunks (content, embedding) VALUES (%s, %s::vector)",
        ("the sea is calm today", str(sea.tolist())),
    )
    with role(conn, database) as (name, dsn):
        conn.execute("SELECT grant_search(%s)", (name,))
        settings = Settings(database_url=dsn, model_cache=model_cache)
        with Indexer(settings, embedder=embedder) as ix:
            hits = ix.search("the sea", 1)
        assert [h.content for h in hits] == ["the sea is calm today"]


def test_a_searching_role_can_run_similar_chunks(conn: Connection, database: str) -> None:
    """similar_chunks is granted by grant_search, and ran for such a role before 0009;
    0009's version reads every column of models (SELECT *), record and fingerprint
    included, which grant_search does not grant."""
    first = _embedded_row(conn, "one", 0)
    _embedded_row(conn, "two", 1)
    with role(conn, database) as (name, dsn):
        conn.execute("SELECT grant_search(%s)", (name,))
        with as_role(dsn) as reader:
            rows = reader.execute("SELECT id FROM similar_chunks(%s, 5)", (first,)).fetchall()
    assert len(rows) == 1


# --- a role that may write rows -------------------------------------------------------


def test_a_row_deleted_and_inserted_again_under_its_id_never_gets_the_old_texts_vector(
    conn: Connection, store: Store
) -> None:
    """A model's background work reads a chunk's text; meanwhile the application
    replaces the row under the same id (DELETE, then INSERT with that id, with the first
    model's vector as a restore does: content_version starts at 1 again).  The model's
    write is guarded by (id, content_version) only, so the vector computed for the old
    text is stored for the new one, its queue entry is removed, and the model counts as
    complete: search by that model serves the old text's vector for good."""
    model = _add_small_model(conn)
    row = _embedded_row(conn, "the old text", 0)
    assert store.fill_model(model) > 0
    worker = uuid.uuid4()
    (claimed,) = store.claim_model_work(model, worker, 10, 30.0, 1000, None)
    assert claimed.content == "the old text"
    # The application replaces the row, keeping its id.
    conn.execute("DELETE FROM chunks WHERE id = %s", (row,))
    conn.execute(
        "INSERT INTO chunks (id, content, embedding) VALUES (%s, 'a new text', %s::vector)",
        (row, vector(1)),
    )
    # The daemon writes what it computed for "the old text".
    store.finish_model_work(
        (model, "m3"),
        worker,
        [claimed],
        [np.array([1.0, 0.0, 0.0], dtype=np.float32)],
        cache_key=None,
        fresh=[False],
        max_chars=1000,
        batch=BatchFigures(uuid.uuid4(), 0, 0.0, 0),
    )
    hits = conn.execute(
        "SELECT id, content FROM search_chunks('[1,0,0]', 5, '{}', 'm3')"
    ).fetchall()
    missing = conn.execute("SELECT model_missing(%s) AS n", (model,)).fetchone()
    assert hits == [], f"the old text's vector is served for the new text: {hits}"
    assert missing is not None and missing["n"] == 1


def test_the_active_table_models_write_is_guarded_like_the_rows(
    conn: Connection, store: Store
) -> None:
    """With a model kept in a table of its own active, complete_batch's guarded UPDATE
    (claimed_by, state, content_version) decides which rows are written, but
    store_model_vectors then writes every row of the batch at the version read.  A row
    replaced under its id while its batch was embedded gets the old text's vector,
    served by the active model until the daemon embeds the new text."""
    model = _add_small_model(conn)
    conn.execute("SELECT activate_model('m3', true)")
    (row,) = store.insert_chunks(["the old text"], ["{}"])
    worker = uuid.uuid4()
    (claimed,) = store.claim(worker, 10, 30.0, 1000)
    conn.execute("DELETE FROM chunks WHERE id = %s", (row,))
    conn.execute("INSERT INTO chunks (id, content) VALUES (%s, 'a new text')", (row,))
    written = store.complete_batch(
        worker,
        uuid.uuid4(),
        [claimed],
        np.array([[1.0, 0.0, 0.0]], dtype=np.float32),
        model="m3",
        token_count=0,
        claim_ms=0.0,
        embed_ms=0.0,
        model_id=model,
        in_column=False,
    )
    assert written == []  # held: the row is not marked embedded
    hits = conn.execute("SELECT id, content FROM search_chunks('[1,0,0]', 5)").fetchall()
    assert hits == [], f"the active model serves the old text's vector: {hits}"


# --- the operator's commands, against the application and the daemon --------------------


def test_dropping_a_model_does_not_stall_search_behind_an_open_transaction(
    conn: Connection, database: str
) -> None:
    """drop_model drops the model's table, whose foreign key's triggers live on chunks:
    an ACCESS EXCLUSIVE lock on chunks, asked for with no lock timeout.  Behind any open
    transaction that read chunks (a long search, a report), it waits, and every search
    and write of chunks queues behind it."""
    _add_small_model(conn)
    _embedded_row(conn, "one", 0)
    with psycopg.connect(database) as report, psycopg.connect(database, autocommit=True) as op:
        report.execute("SELECT count(*) FROM chunks")  # a transaction left open
        drop = _Background(lambda: op.execute("SELECT drop_model('m3')"))
        try:
            _wait_for_lock_wait(conn, "SELECT drop_model%")
            with psycopg.connect(database, autocommit=True) as searcher:
                searcher.execute("SET statement_timeout = '3s'")
                try:
                    hits = searcher.execute(
                        "SELECT id FROM search_chunks(%s::vector, 1)", (vector(0),)
                    ).fetchall()
                except psycopg.errors.QueryCanceled:
                    hits = None
        finally:
            report.rollback()
            drop.join()
    assert hits is not None, "a search waited more than 3 s behind `indexer models drop`"


def test_adding_a_model_does_not_stall_the_applications_writes(
    conn: Connection, database: str
) -> None:
    """add_model creates a table with a foreign key to chunks: a SHARE ROW EXCLUSIVE
    lock on chunks, with no lock timeout.  Behind an application's open transaction
    that wrote a row, it waits, and every other write of chunks queues behind it."""
    with psycopg.connect(database) as app, psycopg.connect(database, autocommit=True) as op:
        app.execute("INSERT INTO chunks (content) VALUES ('in an open transaction')")
        add = _Background(lambda: op.execute("SELECT add_model('m3', 3, '{}', 'fp')"))
        try:
            _wait_for_lock_wait(conn, "SELECT add_model%")
            with psycopg.connect(database, autocommit=True) as other:
                other.execute("SET statement_timeout = '3s'")
                try:
                    other.execute("INSERT INTO chunks (content) VALUES ('another write')")
                    written = True
                except psycopg.errors.QueryCanceled:
                    written = False
        finally:
            app.rollback()
            add.join()
    assert written, "an application's INSERT waited more than 3 s behind `indexer models add`"


def test_dropping_a_model_while_the_daemon_writes_its_vectors_does_not_fail_the_write(
    conn: Connection, database: str, store: Store
) -> None:
    """A daemon has leased a model's work and computed its vectors; the operator drops
    the model meanwhile (its DROP TABLE waiting, as `indexer models drop` does, behind
    a search in progress).  The daemon's write then waits for the dropped table and
    fails with "relation ... does not exist": an error the daemon's loop does not
    catch (it catches DatabaseUnavailable only), so `indexer run` exits."""
    model = _add_small_model(conn)
    _embedded_row(conn, "one", 0)
    assert store.fill_model(model) > 0
    worker = uuid.uuid4()
    rows = store.claim_model_work(model, worker, 10, 30.0, 1000, None)
    assert rows
    with psycopg.connect(database) as search, psycopg.connect(database, autocommit=True) as op:
        search.execute("SELECT count(*) FROM chunks")  # a search in progress
        drop = _Background(lambda: op.execute("SELECT drop_model('m3')"))
        _wait_for_lock_wait(conn, "SELECT drop_model%")
        write = _Background(
            lambda: store.finish_model_work(
                (model, "m3"),
                worker,
                rows,
                [np.array([1.0, 0.0, 0.0], dtype=np.float32)] * len(rows),
                cache_key=None,
                fresh=[False] * len(rows),
                batch=BatchFigures(uuid.uuid4(), 0, 0.0, 0),
                max_chars=1000,
            )
        )
        _wait_for_lock_wait(conn, "%store_model_vectors%")
        search.rollback()  # the search ends: the drop goes through
        drop.join()
        write.join()
    assert drop.error is None
    assert write.error is None, f"the daemon's write failed: {write.error!r}"


# --- the model the upgrade registered ---------------------------------------------------


@pytest.fixture
def minilm_cls(model_cache: Path) -> Embedder:
    """Another model of 384 dimensions: the packaged weights, CLS-pooled."""
    record = describe_folder(packaged_folder(), name="minilm-cls", pooling="cls")
    return Embedder(record=record, cache_dir=model_cache)


def _legacy_store(conn: Connection, embedder: Embedder) -> None:
    """A store as the upgrade left it: rows embedded by all-MiniLM-L6-v2 in
    chunks.embedding, its model registered with no fingerprint yet."""
    for text in ("notes about the sea", "a recipe for bread"):
        conn.execute(
            "INSERT INTO chunks (content, embedding) VALUES (%s, %s::vector)",
            (text, str(embedder.embed([text])[0].tolist())),
        )
    (first,) = conn.execute("SELECT name, fingerprint FROM models").fetchall()
    assert (first["name"], first["fingerprint"]) == (embedder.name, None)


def test_a_daemon_never_writes_another_models_vectors_as_the_upgrades_model(
    conn: Connection,
    settings: Settings,
    store: Store,
    embedder: Embedder,
    minilm_cls: Embedder,
) -> None:
    """After the upgrade, the operator adds a model and runs a daemon whose settings
    name it (INDEXER_MODEL_DIR).  reconcile accepts it (it is registered) and adopts
    nothing; Embedders.get then serves the upgrade's unadopted model with the
    settings' embedder: the daemon writes the new model's vectors into
    chunks.embedding, among all-MiniLM-L6-v2's, labelled as that model."""
    _legacy_store(conn, embedder)
    store.add_model(
        "minilm-cls",
        dimension=384,
        record=minilm_cls.record.as_dict(),
        fingerprint=minilm_cls.record.fingerprint,
    )
    reconcile(store.models(), minilm_cls, store)  # the daemon starts
    worker = Worker(settings, store, minilm_cls, load_model=Embedders(settings, minilm_cls).loader)
    (new,) = store.insert_chunks(["a new note about rivers"], ["{}"])
    worker.run(once=True)
    row = conn.execute(
        "SELECT embedding::real[] AS v, embedding_model FROM chunks WHERE id = %s", (new,)
    ).fetchone()
    assert row is not None
    if row["v"] is not None:
        expected = embedder.embed(["a new note about rivers"])[0]
        cosine = float(np.dot(np.array(row["v"]), expected))
        assert cosine > 0.999, (
            f"chunks.embedding (model {embedder.name}) holds a vector of another model "
            f"(cosine {cosine:.3f} to {embedder.name}'s; labelled {row['embedding_model']!r})"
        )
    # (Fixed: the daemon cannot run the active model, the upgrade's, not adopted: it
    # leaves the row to a daemon that can, rather than write another model's vector.)
    state = conn.execute("SELECT state FROM chunks WHERE id = %s", (new,)).fetchone()
    assert state is not None and state["state"] == "pending"


def test_a_query_is_embedded_by_the_model_whose_vectors_it_is_compared_with(
    conn: Connection, settings: Settings, store: Store, embedder: Embedder, minilm_cls: Embedder
) -> None:
    """The same gap on the query side: a search by the active model (the upgrade's,
    not adopted) from a process whose settings name another registered model embeds
    the query with that other model (Embedders.for_query), and compares it with
    all-MiniLM-L6-v2's vectors."""
    _legacy_store(conn, embedder)
    store.add_model(
        "minilm-cls",
        dimension=384,
        record=minilm_cls.record.as_dict(),
        fingerprint=minilm_cls.record.fingerprint,
    )
    # (Fixed: refused with one line, rather than embedded by the wrong model.)
    with pytest.raises(ModelNotFound, match="has no record yet, and the settings name another"):
        Embedders(settings, minilm_cls).for_query(store.models(), None)


# --- upgrade ---------------------------------------------------------------------------


def test_the_upgrade_grants_no_more_than_the_roles_had(conn: Connection, database: str) -> None:
    """The upgrade re-grants, to each role that could execute 0006's search functions,
    everything grant_search gives: SELECT on chunks included.  A role that had been
    granted EXECUTE on search_chunks alone (it could not read chunks, so it found
    nothing) can read every row of chunks after `indexer migrate`."""
    migrate.downgrade(database, "public", "0008")
    with role(conn, database) as (name, _):
        conn.execute(
            sql.SQL(
                "GRANT USAGE ON SCHEMA public TO {0};"
                " GRANT EXECUTE ON FUNCTION search_chunks(vector, integer, jsonb) TO {0}"
            ).format(sql.Identifier(name))
        )

        def may_read_chunks() -> bool:
            row = conn.execute(
                "SELECT has_table_privilege(%s, 'chunks', 'SELECT') AS ok", (name,)
            ).fetchone()
            assert row is not None
            return bool(row["ok"])

        assert not may_read_chunks()
        migrate.upgrade(database, "public")
        assert not may_read_chunks(), "the upgrade granted SELECT on chunks"


# --- the cost of a search by a model kept in a table of its own -------------------------


def test_a_search_by_a_table_model_does_not_check_every_passage_of_the_store(
    conn: Connection, database: str
) -> None:
    """model_<id>_vectors' policy (EXISTS (SELECT 1 FROM chunks c WHERE c.id =
    chunk_id)) is planned as a hashed subplan: a full scan of chunks, under chunks'
    policy, for every search a searching role makes by such a model, however small k.
    Every passage of a source under row-level security is then looked up in its table
    (passage_visible), running that table's policies once per passage of the store.
    The same search by the model kept in chunks.embedding checks only the rows the
    index scan yields.  Counted here with a policy that draws from a sequence.  Seen on
    the embedded PostgreSQL 18; PostgreSQL 15's planner probes chunks row by row (this
    test passes there)."""
    conn.execute("CREATE SEQUENCE probes")
    conn.execute("CREATE TABLE notes (id text PRIMARY KEY, body text)")
    conn.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY counted ON notes FOR SELECT USING (nextval('probes') > 0)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
    source = conn.execute("SELECT id FROM sources WHERE name = 'public.notes'").fetchone()
    assert source is not None
    passages = 300
    conn.execute(
        "INSERT INTO notes SELECT 'k' || g, 'note ' || g FROM generate_series(1, %s) g",
        (passages,),
    )
    # The daemon's work, written as it writes it: documents indexed, one passage each.
    conn.execute(
        "INSERT INTO source_documents (source_id, doc_key, state)"
        " SELECT %s, 'k' || g, 'indexed' FROM generate_series(1, %s) g"
        " ON CONFLICT (source_id, doc_key) DO UPDATE SET state = 'indexed'",
        (source["id"], passages),
    )
    conn.execute(
        "INSERT INTO chunks (content, embedding, document_id, source_id, doc_key, position)"
        " SELECT 'note', %s::vector, d.id, d.source_id, d.doc_key, 0 FROM source_documents d"
        " WHERE d.source_id = %s",
        (vector(5), source["id"]),
    )
    conn.execute("DELETE FROM source_changes")  # applied, as a daemon does
    row = _embedded_row(conn, "a row", 0)
    model = _add_small_model(conn)
    conn.execute(
        "SELECT store_model_vectors(%s, array_agg(id), array_agg(content_version),"
        " array_agg(CASE WHEN id = %s THEN '[1,0,0]' ELSE '[0,0,1]' END::vector),"
        " array_agg(sha256(convert_to(content, 'UTF8'))), NULL) FROM chunks",
        (model, row),
    )
    conn.execute("ANALYZE")
    with role(conn, database) as (name, dsn):
        conn.execute("SELECT grant_search(%s)", (name,))
        conn.execute(
            sql.SQL("GRANT SELECT ON notes TO {0}; GRANT USAGE ON SEQUENCE probes TO {0}").format(
                sql.Identifier(name)
            )
        )

        def probes(search: str, *args: Any) -> int:
            conn.execute("SELECT setval('probes', 1, false)")
            with as_role(dsn) as reader:
                hits = reader.execute(search, args).fetchall()
            assert hits == [(row,)]
            last = conn.execute("SELECT last_value, is_called FROM probes").fetchone()
            assert last is not None
            return int(last["last_value"]) if last["is_called"] else 0

        by_column = probes("SELECT id FROM search_chunks(%s::vector, 1)", vector(0))
        by_table = probes("SELECT id FROM search_chunks('[1,0,0]', 1, '{}', 'm3')")
    assert by_table <= max(by_column, 10), (
        f"one search (k = 1, rows only) by the table model ran the source table's policy "
        f"{by_table} times (once per passage of the store; by the column model: {by_column})"
    )


def test_a_model_activated_without_force_lacks_no_vector_of_text_in_flight(
    conn: Connection, store: Store
) -> None:
    """activate_model refuses while an embedded chunk lacks the model's vector; rows a
    daemon has claimed are not counted.  The daemon writes them with the model that
    was active when it claimed them (it reads the registry between claims only), and
    queues them for the newly active one: once that batch commits, the active model
    lacks their vectors, and the default search does not find them, although the switch
    was not forced.  They wait for the background fill, which runs only when the row
    and document queues are empty."""
    model = _add_small_model(conn)
    first = _embedded_row(conn, "already embedded", 0)
    _store_vectors(conn, model, first, "[0,1,0]")
    (new,) = store.insert_chunks(["in flight"], ["{}"])
    worker = uuid.uuid4()
    (claimed,) = store.claim(worker, 10, 30.0, 1000)
    assert claimed.id == new
    assert store.activate_model("m3") == 0  # not forced: nothing missing
    vec = np.zeros(384, dtype=np.float32)
    vec[0] = 1.0
    store.complete_batch(
        worker,
        uuid.uuid4(),
        [claimed],
        np.stack([vec]),
        model="all-MiniLM-L6-v2",
        token_count=0,
        claim_ms=0.0,
        embed_ms=0.0,
        model_id=1,
        in_column=True,
    )
    missing = conn.execute("SELECT model_missing(%s) AS n", (model,)).fetchone()
    assert missing is not None
    assert missing["n"] == 0, (
        f"the active model (activated without force) lacks {missing['n']} embedded chunk(s)"
    )
