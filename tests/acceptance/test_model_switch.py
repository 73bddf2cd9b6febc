"""A second model filled by real daemons killed at random moments while the application
writes (migration 0009): every chunk ends up with the new model's vector of its
current text, once, and the model one valid index built after the fill (migration
0011); then the switch and the rollback."""

from __future__ import annotations

import random
import signal
import time
from functools import partial
from pathlib import Path

import numpy as np
import psycopg

from indexer.db.connect import Connection
from indexer.embedding import Embedder
from indexer.embedding.describe import describe_folder
from indexer.store import Store

from ..helpers import start_daemon, wait_until
from .test_documents_reliability import count, started
from .test_reliability import LEASE, corpus, daemon_env, stop_all

TINY = Path(__file__).parent.parent / "fixtures" / "models" / "bert-cls"


def settled(conn: Connection) -> bool:
    """Every row embedded, and no model has work left (one snapshot)."""
    return (
        count(
            conn,
            "SELECT (SELECT count(*) FROM chunks WHERE state <> 'embedded')"
            " + (SELECT count(*) FROM model_pending)"
            " + (SELECT count(*) FROM chunks c WHERE c.id > (SELECT min(fill_after) FROM models))",
        )
        == 0
    )


def test_sigkill_while_a_second_model_fills_loses_and_mixes_nothing(
    database: str, model_cache: Path, conn: Connection, tmp_path: Path
) -> None:
    rng = random.Random(7)
    texts = corpus(600, seed=3)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO chunks (content) VALUES (%s)", [(t,) for t in texts])
    env = daemon_env(database, model_cache)
    log = tmp_path / "daemons.log"
    daemons = [start_daemon(env, log) for _ in range(2)]
    tiny = Embedder(record=describe_folder(TINY), cache_dir=model_cache)
    try:
        assert wait_until(lambda: settled(conn), 300, 0.2), log.read_text()
        with Store(database, "public") as store:
            store.add_model(
                "tiny-cls",
                dimension=tiny.dim,
                record=tiny.record.as_dict(),
                fingerprint=tiny.record.fingerprint,
                defer_index_at=1,  # its index built after the fill, by daemons being killed
            )
            for round_ in range(3):
                for chunk_id in rng.sample(range(1, len(texts) + 1), 20):
                    conn.execute(
                        "UPDATE chunks SET content = %s WHERE id = %s",
                        (f"edited {round_} {chunk_id} {texts[chunk_id - 1]}", chunk_id),
                    )
                conn.execute("INSERT INTO chunks (content) VALUES (%s)", (f"new row {round_}",))
                victim = rng.randrange(len(daemons))
                assert wait_until(partial(started, conn, daemons[victim]), 300, 0.1)
                time.sleep(rng.uniform(0.2, 1.5))  # a random moment of its work
                daemons[victim].send_signal(signal.SIGKILL)
                daemons[victim].wait(10)
                daemons[victim] = start_daemon(env, log)
            assert wait_until(lambda: settled(conn), 300 + LEASE, 0.2), log.read_text()

            rows = conn.execute(
                "SELECT c.id, c.content, v.embedding::real[] AS v, v.content_version,"
                " c.content_version AS current FROM chunks c"
                " LEFT JOIN model_2_vectors v ON v.chunk_id = c.id ORDER BY c.id"
            ).fetchall()
            assert all(r["v"] is not None for r in rows), "a chunk without the new model's vector"
            assert all(r["content_version"] == r["current"] for r in rows)
            expected = tiny.embed([r["content"] for r in rows])
            assert np.allclose(np.array([r["v"] for r in rows]), expected, atol=1e-5)
            status = {r["model"]: r for r in store.model_status()}
            assert status["tiny-cls"]["missing"] == 0
            assert status["tiny-cls"]["failed"] == 0
            assert count(conn, "SELECT count(*) FROM events WHERE kind = 'model_batch'") > 0

            # One index, built once the fill was done (a build cut off by a SIGKILL goes
            # on in its backend, or is replaced by the next daemon's).
            assert wait_until(
                lambda: (
                    count(
                        conn,
                        "SELECT count(*) FROM indexer_model_status"
                        " WHERE model = 'tiny-cls' AND index = 'ready'",
                    )
                    == 1
                ),
                300,
                0.2,
            ), log.read_text()
            assert (
                count(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'model_2_vectors'")
                == 2
            )  # with the key

            # The switch, then new text embedded by the new model first, then rollback.
            assert store.activate_model("tiny-cls") == 0
            conn.execute("INSERT INTO chunks (content) VALUES ('after the switch')")
            assert wait_until(lambda: settled(conn), 120 + LEASE, 0.2), log.read_text()
            new = conn.execute(
                "SELECT c.embedding IS NOT NULL AS first, v.embedding::real[] AS v FROM chunks c"
                " JOIN model_2_vectors v ON v.chunk_id = c.id"
                " WHERE c.content = 'after the switch'"
            ).fetchone()
            assert new is not None and new["first"]  # both models embedded it
            assert np.allclose(new["v"], tiny.embed(["after the switch"])[0], atol=1e-5)
            assert len(store.search(tiny.embed_queries(["switch"])[0], 5)) == 5
            first = next(m.name for m in store.models() if not m.active)
            assert store.activate_model(first) == 0
    finally:
        stop_all(daemons)
    assert "Traceback" not in log.read_text()


def _index_state(conn: Connection) -> str:
    row = conn.execute("SELECT model_index(2) AS state").fetchone()
    assert row is not None
    return str(row["state"])


def _indexes(conn: Connection) -> list[tuple[str, bool]]:
    rows = conn.execute(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'model_2_vectors'::regclass AND NOT i.indisprimary"
    ).fetchall()
    return [(r["relname"], r["indisvalid"]) for r in rows]


def test_sigkill_during_an_index_build_leaves_one_valid_index(
    database: str, model_cache: Path, conn: Connection, tmp_path: Path
) -> None:
    conn.execute("INSERT INTO chunks (content) SELECT 'note ' || i FROM generate_series(1, 30) i")
    env = daemon_env(database, model_cache)
    log = tmp_path / "daemons.log"
    first = start_daemon(env, log, "--once")
    assert first.wait(300) == 0, log.read_text()
    tiny = Embedder(record=describe_folder(TINY), cache_dir=model_cache)
    with Store(database, "public") as store:
        store.add_model(
            "tiny-cls",
            dimension=tiny.dim,
            record=tiny.record.as_dict(),
            fingerprint=tiny.record.fingerprint,
            defer_index_at=1,
        )
    daemons = []
    try:
        # A transaction older than the build holds it before its end (CREATE INDEX
        # CONCURRENTLY waits for it): the daemon is killed in the middle of its build.
        with psycopg.connect(database) as holder:
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT 1")
            daemons.append(start_daemon(env, log))
            assert wait_until(
                lambda: _index_state(conn) == "building" and bool(_indexes(conn)), 300, 0.1
            ), log.read_text()
            daemons[0].send_signal(signal.SIGKILL)
            daemons[0].wait(10)
            # Another daemon leaves the model's index to the build in progress.
            again = start_daemon(env, log, "--once")
            assert again.wait(300) == 0, log.read_text()
            assert _index_state(conn) in ("building", "broken")
            holder.rollback()
        # The build's backend finishes it, or, cut off, the next daemon builds it again.
        daemons.append(start_daemon(env, log))
        assert wait_until(lambda: _index_state(conn) == "ready", 300, 0.1), log.read_text()
        assert _indexes(conn) == [("model_2_vectors_embedding_idx", True)]
        with Store(database, "public") as store:
            assert store.activate_model("tiny-cls") == 0
            assert len(store.search(tiny.embed_queries(["note 3"])[0], 5)) == 5
    finally:
        stop_all(daemons)
    assert "Traceback" not in log.read_text()
