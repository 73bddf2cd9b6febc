"""Sources and documents under real daemons: SIGKILL, concurrency, removal, back-fill."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

from indexer.db.connect import Connection, connect
from indexer.embedding import Embedder
from indexer.settings import Settings

from ..helpers import start_daemon, wait_until
from ..integration.test_documents import document, expected_chunks
from .test_reliability import LEASE, daemon_env, stop_all


def count(conn: Connection, query: str, *params: object) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def indexed_everything(conn: Connection) -> bool:
    """Nothing left to do, read in one snapshot: a daemon applying the triggers' changes
    turns them into documents in one transaction, and three separate reads could see the
    documents before it and the changes after it (nothing to do, and nothing done)."""
    return (
        count(
            conn,
            "SELECT (SELECT count(*) FROM source_documents WHERE state <> 'indexed')"
            " + (SELECT count(*) FROM source_changes)"
            " + (SELECT count(*) FROM sources WHERE backfill_done_at IS NULL)",
        )
        == 0
    )


def check_documents_match_their_text(conn: Connection, embedder: Embedder) -> None:
    """Every document of `documents` indexed once, as the chunks of its current text."""
    settings = Settings()
    texts = {str(r["id"]): r["content"] for r in conn.execute("SELECT id, content FROM documents")}
    for key, text in texts.items():
        rows = list(
            conn.execute(
                "SELECT content, position, char_start, char_end FROM chunks"
                " WHERE source_id = 1 AND doc_key = %s ORDER BY position",
                (key,),
            )
        )
        assert [r["content"] for r in rows] == expected_chunks(settings, embedder, text), key
        assert [r["position"] for r in rows] == list(range(len(rows)))
    assert count(conn, "SELECT count(*) FROM source_documents WHERE source_id = 1") == len(texts)
    orphans = count(
        conn,
        "SELECT count(*) FROM chunks c WHERE c.document_id IS NOT NULL AND NOT EXISTS"
        " (SELECT 1 FROM source_documents d WHERE d.id = c.document_id AND d.state = 'indexed')",
    )
    assert orphans == 0


def started(conn: Connection, daemon: subprocess.Popen[str]) -> bool:
    """The daemon is at work: past its start-up (model loaded, database reached)."""
    query = (
        "SELECT count(*) FROM events WHERE kind = 'worker_started' AND (detail->>'pid')::int = %s"
    )
    return count(conn, query, daemon.pid) > 0


def test_sigkill_while_documents_are_re_chunked_loses_and_mixes_nothing(
    database: str, model_cache: Path, conn: Connection, embedder: Embedder, tmp_path: Path
) -> None:
    rng = random.Random(5)
    for n in range(24):
        conn.execute("INSERT INTO documents (content) VALUES (%s)", (document(range(n, n + 6)),))
    env = daemon_env(database, model_cache)
    log = tmp_path / "daemons.log"
    daemons = [start_daemon(env, log) for _ in range(2)]
    try:
        for round_ in range(4):
            for doc_id in rng.sample(range(1, 25), 6):
                text = document(range(100 * (round_ + 1) + doc_id, 100 * (round_ + 1) + doc_id + 5))
                conn.execute("UPDATE documents SET content = %s WHERE id = %s", (text, doc_id))
            victim = rng.randrange(len(daemons))
            # Killed at a random moment of its work, not of its start-up.
            at_work = partial(started, conn, daemons[victim])
            assert wait_until(at_work, 300, 0.1), log.read_text()
            time.sleep(rng.uniform(0.5, 2.5))
            daemons[victim].send_signal(signal.SIGKILL)
            daemons[victim].wait(10)
            daemons[victim] = start_daemon(env, log)
        assert wait_until(lambda: indexed_everything(conn), 120 + LEASE, 0.2), log.read_text()
    finally:
        stop_all(daemons)
    check_documents_match_their_text(conn, embedder)
    assert "Traceback" not in log.read_text()


def test_concurrent_daemons_index_each_document_once(
    database: str, model_cache: Path, conn: Connection, embedder: Embedder, tmp_path: Path
) -> None:
    env = daemon_env(database, model_cache, INDEXER_DOCUMENT_CLAIM_SIZE="4")
    log = tmp_path / "daemons.log"
    daemons = [start_daemon(env, log) for _ in range(3)]
    try:
        # The documents come once every daemon is at work: one that started first
        # could otherwise index them all before the others have loaded the model.
        assert wait_until(lambda: all(started(conn, d) for d in daemons), 300, 0.1), log.read_text()
        conn.execute(
            "INSERT INTO documents (content)"
            " SELECT 'Document ' || g || ': ' || repeat('word' || g || ' ', 150)"
            " FROM generate_series(1, 90) g"
        )
        assert wait_until(lambda: indexed_everything(conn), 180, 0.2), log.read_text()
    finally:
        codes = stop_all(daemons)
    assert codes == [0, 0, 0]
    writes = Counter(
        doc
        for r in conn.execute(
            "SELECT detail->'documents' AS docs FROM events WHERE kind = 'batch_completed'"
        )
        for doc in r["docs"] or []
    )
    assert len(writes) == 90
    assert set(writes.values()) == {1}
    workers = count(
        conn,
        "SELECT count(DISTINCT worker_id) FROM events WHERE kind = 'batch_completed'"
        " AND jsonb_array_length(detail->'documents') > 0",
    )
    assert workers >= 2
    check_documents_match_their_text(conn, embedder)


def test_removing_a_source_while_the_daemon_runs(
    database: str, model_cache: Path, conn: Connection, tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE pages (id bigint PRIMARY KEY, body text)")
    conn.execute(
        "INSERT INTO pages SELECT g, 'Page ' || g || ' ' || repeat('text' || g || ' ', 200)"
        " FROM generate_series(1, 150) g"
    )
    conn.execute("SELECT add_source('pages', NULL, ARRAY['body'])")
    env = daemon_env(database, model_cache)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(env, log)
    try:
        some = "SELECT count(*) FROM source_documents WHERE source_id = 2 AND state = 'indexed'"
        assert wait_until(lambda: count(conn, some) >= 5, 120, 0.1), log.read_text()
        conn.execute("SELECT remove_source('public.pages')")
        assert count(conn, "SELECT count(*) FROM chunks WHERE source_id = 2") == 0
        conn.execute("INSERT INTO pages VALUES (1000, 'written after the removal')")
        conn.execute("INSERT INTO documents (content) VALUES ('still indexing other sources')")
        assert wait_until(lambda: indexed_everything(conn), 60, 0.1), log.read_text()
        # Nothing read before the removal is still in flight: the daemon indexes one claim
        # of documents at a time, and it has indexed the one added after the removal.
        assert daemon.poll() is None
    finally:
        codes = stop_all([daemon])
    assert codes == [0]
    assert count(conn, "SELECT count(*) FROM chunks WHERE source_id = 2") == 0
    assert count(conn, "SELECT count(*) FROM source_documents WHERE source_id = 2") == 0
    assert count(conn, "SELECT count(*) FROM chunks WHERE source_id = 1") == 1
    assert "Traceback" not in log.read_text()


def test_backfill_of_50k_rows_with_sigkill_while_the_application_writes(
    database: str, model_cache: Path, conn: Connection, tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, label text, hits int DEFAULT 0)")
    conn.execute(
        "INSERT INTO items (id, label) SELECT g, 'item of kind ' || (g % 40)"
        " FROM generate_series(1, 50000) g"
    )
    conn.execute("SELECT add_source('items', NULL, ARRAY['label'])")
    stop = threading.Event()
    errors: list[BaseException] = []

    def application() -> None:
        app = connect(database, "public", autocommit=True)
        rng = random.Random(9)
        next_id = 60000
        try:
            while not stop.is_set():
                action = rng.random()
                if action < 0.4:
                    app.execute("INSERT INTO items (id, label) VALUES (%s, 'new')", (next_id,))
                    next_id += 1
                elif action < 0.7:
                    app.execute(
                        "UPDATE items SET label = label || '!' WHERE id = %s",
                        (rng.randrange(1, 50001),),
                    )
                elif action < 0.85:
                    app.execute(
                        "UPDATE items SET hits = hits + 1 WHERE id = %s", (rng.randrange(1, 50001),)
                    )
                else:
                    app.execute("DELETE FROM items WHERE id = %s", (rng.randrange(1, 50001),))
                time.sleep(0.002)
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)
        finally:
            app.close()

    writer = threading.Thread(target=application)
    writer.start()
    env = daemon_env(
        database, model_cache, INDEXER_BACKFILL_BATCH="2000", INDEXER_DOCUMENT_CLAIM_SIZE="500"
    )
    log = tmp_path / "daemon.log"
    daemon: subprocess.Popen[str] = start_daemon(env, log)
    try:
        progress = "SELECT backfilled FROM sources WHERE name = 'public.items'"
        assert wait_until(lambda: count(conn, progress) >= 10000, 120, 0.05), log.read_text()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        daemon = start_daemon(env, log)
        done = (
            "SELECT count(*) FROM sources"
            " WHERE name = 'public.items' AND backfill_done_at IS NOT NULL"
        )
        assert wait_until(lambda: count(conn, done) == 1, 180, 0.1), log.read_text()
        stop.set()
        writer.join()
        # A key the back-fill read just before the application deleted its row is
        # queued once more; the daemon forgets it when it finds no row.
        assert wait_until(lambda: indexed_everything(conn), 240, 0.2), log.read_text()
    finally:
        stop.set()
        writer.join()
        stop_all([daemon])
    assert errors == []
    keys = {str(r["id"]) for r in conn.execute("SELECT id FROM items")}
    queued = [
        r["doc_key"]
        for r in conn.execute("SELECT doc_key FROM source_documents WHERE source_id = 2")
    ]
    assert len(queued) == len(set(queued))
    assert set(queued) == keys
    assert "Traceback" not in log.read_text()
