"""The HTTP API: the real uvicorn server on 127.0.0.1, real PostgreSQL, the real model."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from indexer.db.connect import Connection, connect
from indexer.embedding import Embedder
from indexer.exceptions import ConfigurationError
from indexer.http import HttpServer, create_app
from indexer.http.bounds import HttpLimits
from indexer.http.middleware import MAX_BODY_BYTES
from indexer.http.resources import SEARCH_CONNECTIONS
from indexer.limits import MAX_K, MAX_TEXT_CHARS, MAX_TEXTS
from indexer.metrics import Metrics
from indexer.settings import Settings
from indexer.store import DocumentHit, Store
from indexer.store.queries import QUERIES
from indexer.worker import Worker
from tests.helpers import CORPUS, wait_until
from tests.integration.test_sources_sql import apply_changes

# A unix socket directory that does not exist: connecting fails at once.
UNREACHABLE = "postgresql:///indexer?host=/nonexistent/indexer-socket-dir"


@dataclass
class Api:
    client: httpx.Client
    metrics: Metrics
    server: HttpServer


@contextlib.contextmanager
def serve(
    settings: Settings, dsn: str, embedder: Embedder, limits: HttpLimits | None = None
) -> Iterator[Api]:
    metrics = Metrics()
    app = create_app(settings, dsn=dsn, embedder=embedder, metrics=metrics, limits=limits)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    try:
        assert server.port != 0
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield Api(client, metrics, server)
    finally:
        server.stop()
    assert not server.running


@pytest.fixture
def api(settings: Settings, database: str, embedder: Embedder) -> Iterator[Api]:
    with serve(settings, database, embedder) as api:
        yield api


def insert(conn: Connection, *texts: str, metadata: str = "{}") -> list[int]:
    rows = conn.execute(
        "INSERT INTO chunks (content, metadata) SELECT unnest(%s::text[]), %s::jsonb RETURNING id",
        (list(texts), metadata),
    ).fetchall()
    return [r["id"] for r in rows]


def drain(settings: Settings, embedder: Embedder, metrics: Metrics | None = None) -> Worker:
    assert settings.database_url is not None
    with Store(settings.database_url, settings.schema) as store:
        worker = Worker(
            settings, store, embedder, on_batch=metrics.observe_batch if metrics else None
        )
        worker.run(once=True)
    return worker


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def raw_post(port: int, head: str, parts: Iterable[bytes]) -> tuple[int, dict[str, str]]:
    """POST /embed over a plain socket: send ``head`` and ``parts``, then read the answer.

    httpx would send a whole body before reading; this stops sending where the test
    says, so the server's answer to a partly sent body can be read.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\n{head}\r\n".encode()
        )
        for part in parts:
            sock.sendall(part)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


# -- address parsing and binding ------------------------------------------------------


def test_port_in_use_is_one_clear_line(
    settings: Settings, database: str, embedder: Embedder, conn: Connection
) -> None:
    def app_connections() -> int:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        return int(row["n"]) if row else 0

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(
            create_app(settings, dsn=database, embedder=embedder), "127.0.0.1", port
        )
        # The app's three Stores (search, probe, and the models' coverage) connect as
        # soon as it is made ...
        assert wait_until(lambda: app_connections() == 3, 30)
        with pytest.raises(ConfigurationError) as info:
            server.start()
    message = str(info.value)
    assert message == f"cannot listen on 127.0.0.1:{port}: address already in use"
    assert not server.running
    # ... and a server that failed to start lets them go.
    assert wait_until(lambda: app_connections() == 0, 10)


# -- /health and /metrics -------------------------------------------------------------


def test_health_reports_the_backlog(api: Api, conn: Connection, embedder: Embedder) -> None:
    insert(conn, "one", "two")
    response = api.client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["reason"] is None
    assert body["database_reachable"] and body["schema_migrated"] and body["model_loaded"]
    assert (body["model"], body["dim"]) == (embedder.name, 384)
    assert (body["backlog"], body["pending"], body["failed"]) == (2, 2, 0)
    assert body["oldest_pending_age_seconds"] >= 0
    role = conn.execute("SELECT current_user AS r").fetchone()
    assert role is not None and body["search_role"] == role["r"]


def test_health_and_metrics_count_rows_and_passages_apart(
    api: Api, settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    insert(conn, "a row", "another row")
    report = "A long report about databases, their tables and their indexes. " * 60
    conn.execute("INSERT INTO documents (content) VALUES (%s), ('a short one')", (report,))
    drain(settings, embedder, api.metrics)
    passages = conn.execute("SELECT count(*) AS n FROM chunks WHERE document_id IS NOT NULL")
    written = passages.fetchone()
    assert written is not None and written["n"] > 2
    conn.execute("INSERT INTO documents (content) VALUES ('waiting')")
    apply_changes(conn)
    conn.execute("UPDATE source_documents SET state = 'failed' WHERE doc_key = '2'")
    body = api.client.get("/health").json()
    assert (body["backlog"], body["failed"]) == (0, 0)
    assert (body["documents_backlog"], body["documents_failed"]) == (1, 1)
    values = samples(api.client.get("/metrics").text)
    assert values[("indexer_rows_embedded_total", frozenset())] == 2
    assert values[("indexer_passages_written_total", frozenset())] == written["n"]


def test_health_is_503_when_the_database_is_unreachable(
    settings: Settings, embedder: Embedder
) -> None:
    with serve(settings, UNREACHABLE, embedder) as api:
        response = api.client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert "cannot connect to PostgreSQL" in body["reason"]
        assert not body["database_reachable"] and body["model_loaded"]
        assert body["backlog"] is None and body["oldest_pending_age_seconds"] is None

        # Metrics are still served; the database gauge says why the others are stale.
        metrics = api.client.get("/metrics")
        assert metrics.status_code == 200
        values = samples(metrics.text)
        assert values[("indexer_database_up", frozenset())] == 0
        assert values[("indexer_rows_embedded_total", frozenset())] == 0

        # Search needs the database: a clear 503; embedding does not.
        search = api.client.post("/search", json={"query": "anything"})
        assert search.status_code == 503
        assert "cannot connect to PostgreSQL" in search.json()["error"]
        assert api.client.post("/embed", json={"texts": ["still works"]}).status_code == 200


def test_health_answers_in_time_when_the_database_hangs(
    settings: Settings, embedder: Embedder
) -> None:
    # A server that accepts TCP connections and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        dsn = f"postgresql://indexer@127.0.0.1:{silent.getsockname()[1]}/indexer"
        with serve(settings, dsn, embedder) as api:
            response = api.client.get("/health")
            assert response.status_code == 503
            assert response.json()["reason"] == "the database did not answer within 3 s"
            # Metrics are served all the same, once the same deadline has passed.
            metrics = api.client.get("/metrics")
            assert metrics.status_code == 200
            assert samples(metrics.text)[("indexer_database_up", frozenset())] == 0


def test_health_is_503_when_the_schema_is_not_migrated(
    settings: Settings, empty_database: str, embedder: Embedder
) -> None:
    with serve(settings, empty_database, embedder) as api:
        response = api.client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["database_reachable"] and not body["schema_migrated"]
        assert "indexer migrate" in body["reason"]


def test_metrics_count_a_real_batch(
    api: Api, settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    texts = list(CORPUS.values())
    insert(conn, *texts)
    drain(settings, embedder, api.metrics)
    assert api.client.get("/health").status_code == 200

    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)

    def value(name: str, **labels: str) -> float:
        return values[(name, frozenset(labels.items()))]

    assert value("indexer_rows_embedded_total") == len(texts)
    assert value("indexer_tokens_total") == sum(embedder.count_tokens(texts))
    assert value("indexer_batches_total", outcome="completed") == 1
    assert value("indexer_batches_total", outcome="failed") == 0
    assert value("indexer_rows_failed_total") == 0
    assert value("indexer_batch_embed_seconds_count") == 1
    assert value("indexer_backlog_rows") == 0
    assert value("indexer_claim_lag_seconds") == 0
    assert value("indexer_database_up") == 1
    assert value("indexer_http_requests_total", endpoint="/health", status="200") == 1

    # The gauges are the whole table's, read when scraped.
    insert(conn, "waiting one", "waiting two")
    conn.execute("UPDATE chunks SET state = 'failed' WHERE content = 'waiting two'")
    values = samples(api.client.get("/metrics").text)
    assert value("indexer_backlog_rows") == 1
    assert value("indexer_failed_rows") == 1
    assert value("indexer_claim_lag_seconds") >= 0
    assert value("indexer_http_requests_total", endpoint="/metrics", status="200") == 1


# -- /embed ---------------------------------------------------------------------------


def test_embed_texts(api: Api, embedder: Embedder) -> None:
    texts = [*CORPUS.values(), "", "odd Unicode: café ☕ 数据库 \u200b"]
    response = api.client.post("/embed", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["dim"]) == (embedder.name, 384)
    got = np.array(body["embeddings"], dtype=np.float32)
    assert got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, embedder.embed(texts), atol=1e-5)


def test_embed_chunks_echoes_the_ids(api: Api, embedder: Embedder) -> None:
    chunks = [
        {"chunk_id": 7, "content": CORPUS["cat"]},
        {"chunk_id": "b-2", "content": CORPUS["db"]},
    ]
    response = api.client.post("/embed", json={"batch_id": "batch-1", "chunks": chunks})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["batch_id"] == "batch-1"
    assert (body["model"], body["dim"]) == (embedder.name, 384)
    assert [c["chunk_id"] for c in body["chunks"]] == [7, "b-2"]
    got = np.array([c["embedding"] for c in body["chunks"]], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.embed([CORPUS["cat"], CORPUS["db"]]), atol=1e-5)


def test_embed_limits_are_413(api: Api) -> None:
    assert api.client.post("/embed", json={"texts": ["a"] * MAX_TEXTS}).status_code == 200
    too_many = api.client.post("/embed", json={"texts": ["a"] * (MAX_TEXTS + 1)})
    assert too_many.status_code == 413
    assert too_many.json() == {
        "error": f"{MAX_TEXTS + 1} texts in one request; at most {MAX_TEXTS}"
    }
    too_long = api.client.post("/embed", json={"texts": ["ok", "x" * (MAX_TEXT_CHARS + 1)]})
    assert too_long.status_code == 413
    assert "text 1 has" in too_long.json()["error"]
    long_chunk = api.client.post(
        "/embed", json={"chunks": [{"chunk_id": 1, "content": "y" * (MAX_TEXT_CHARS + 1)}]}
    )
    assert long_chunk.status_code == 413


def test_a_declared_oversized_body_is_refused_before_it_is_read(api: Api) -> None:
    # Only the headers are sent: an answer that waited for the body would never come.
    status, body = raw_post(api.server.port, f"Content-Length: {MAX_BODY_BYTES + 1}\r\n", [])
    assert status == 413
    assert body == {"error": f"the request body is larger than {MAX_BODY_BYTES} bytes"}


def test_a_chunked_body_over_the_limit_is_refused(api: Api) -> None:
    # No Content-Length: pieces of 64 KiB, one byte more than the limit in all.  The
    # last byte and the end of the body go together, so that the server has read
    # everything when it answers (closing a socket with unread data resets it).
    start = b'{"texts": ["'
    pieces = [start, *[b"x" * 65536] * ((MAX_BODY_BYTES - len(start)) // 65536)]
    pieces.append(b"x" * (MAX_BODY_BYTES - sum(map(len, pieces))))
    assert sum(map(len, pieces)) == MAX_BODY_BYTES
    parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p] + [b"1\r\nx\r\n0\r\n\r\n"]
    status, body = raw_post(api.server.port, "Transfer-Encoding: chunked\r\n", parts)
    assert status == 413
    assert "larger than" in body["error"]
    # The server is fine afterwards.
    assert api.client.post("/embed", json={"texts": ["after"]}).status_code == 200


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"texts": "one string"}', "texts: Input should be a valid list"),
        (b'{"texts": [1, 2]}', "texts.0: Input should be a valid string"),
        (b"{}", 'give either "texts" or "chunks"'),
        (b'{"texts": ["a"], "chunks": []}', 'give either "texts" or "chunks"'),
        (b'{"texts": ["a"], "batch_id": 3}', '"batch_id" goes with "chunks"'),
        (b'{"txts": ["a"]}', "txts: Extra inputs are not permitted"),
        (b'{"chunks": [{"content": "a"}]}', "chunks.0.chunk_id: Field required"),
    ],
)
def test_malformed_embed_bodies_are_422(api: Api, content: bytes, message: str) -> None:
    response = api.client.post(
        "/embed", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    body = response.json()
    assert list(body) == ["error"] and message in body["error"], body


def test_a_body_that_is_not_declared_json_is_422(api: Api) -> None:
    for headers in ({}, {"content-type": "application/x-www-form-urlencoded"}):
        response = api.client.post("/embed", content=b'{"texts": ["a"]}', headers=headers)
        assert response.status_code == 422
        assert response.json() == {
            "error": "send a JSON body with the header Content-Type: application/json"
        }


def test_errors_are_json_without_tracebacks(api: Api) -> None:
    missing = api.client.get("/nowhere")
    assert (missing.status_code, missing.json()) == (404, {"error": "Not Found"})
    wrong_method = api.client.get("/embed")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    for response in (missing, wrong_method):
        assert "Traceback" not in response.text


# -- /search --------------------------------------------------------------------------


def test_search_puts_the_related_row_first(
    api: Api, settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    ids = dict(zip(CORPUS, insert(conn, *CORPUS.values(), metadata='{"src": "t"}'), strict=True))
    drain(settings, embedder)
    response = api.client.post("/search", json={"query": "which database supports SQL?", "k": 3})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    assert results[0]["id"] == ids["db"]
    assert results[0]["content"] == CORPUS["db"]
    assert results[0]["metadata"] == {"src": "t"}
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    expected = float(
        np.dot(
            embedder.embed(["which database supports SQL?"])[0], embedder.embed([CORPUS["db"]])[0]
        )
    )
    assert abs(scores[0] - expected) < 1e-4
    default_k = api.client.post("/search", json={"query": "kitten"}).json()["results"]
    assert len(default_k) == len(CORPUS) and default_k[0]["id"] == ids["cat"]


def test_search_filter_returns_k_rows_when_most_rows_do_not_match(
    api: Api, database: str, embedder: Embedder, conn: Connection
) -> None:
    # 3000 rows, 1 in 60 in group 7.  A table this small would be scanned whole (and the
    # filter then is exact): turn sequential scans off for the API's new connections so
    # that /search takes the HNSW path, as it does on large tables.
    dbname = psycopg.conninfo.conninfo_to_dict(database)["dbname"]
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET enable_seqscan = off").format(sql.Identifier(str(dbname)))
    )
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with conn.cursor().copy("COPY chunks (content, metadata, embedding) FROM STDIN") as copy:
        for i, v in enumerate(vectors):
            copy.write_row(
                (
                    f"row {i}",
                    json.dumps({"group": i % 60}),
                    "[" + ",".join(f"{x:.6f}" for x in v) + "]",
                )
            )
    conn.execute("ANALYZE chunks")
    query = "stock prices dropped"
    params = {
        "query": embedder.embed([query])[0],
        "k": 10,
        "filter": '{"group": 7}',
        "max_chars": 10,
        "model": None,
    }

    # Without pgvector's iterative scan, one HNSW scan of ef_search = 100 candidates
    # holds only about two rows of group 7: this is what /search must do better than.
    plain = (
        "SELECT id FROM chunks WHERE metadata @> %(filter)s::jsonb"
        " ORDER BY embedding <=> %(query)s LIMIT %(k)s"
    )
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET hnsw.ef_search = 100")
    plan = "\n".join(r["QUERY PLAN"] for r in conn.execute("EXPLAIN " + plain, params))
    assert "chunks_embedding_idx" in plan, plan
    assert len(conn.execute(plain, params).fetchall()) < 10
    # search_chunks() itself does better, whatever the session's settings.
    assert len(conn.execute(QUERIES["search"], params).fetchall()) == 10

    response = api.client.post("/search", json={"query": query, "k": 10, "filter": {"group": 7}})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 10
    assert all(r["metadata"] == {"group": 7} for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    none = api.client.post("/search", json={"query": query, "filter": {"group": 999}})
    assert none.json() == {"results": []}


def test_concurrent_searches_share_one_bounded_store(
    api: Api, settings: Settings, embedder: Embedder, conn: Connection, database: str
) -> None:
    ids = dict(zip(CORPUS, insert(conn, *CORPUS.values()), strict=True))
    drain(settings, embedder)
    queries = {"db": "which database supports SQL?", "cat": "a sleepy kitten", "rain": "weather"}
    asked = [*queries.items()] * 6

    def top_hit(query: str) -> int:
        response = httpx.post(api.server.url + "/search", json={"query": query, "k": 1}, timeout=60)
        assert response.status_code == 200, response.text
        return int(response.json()["results"][0]["id"])

    def blocked() -> int:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        return int(row["n"]) if row else 0

    # While the table is locked, every search that got a connection waits on it: the
    # API must hold SEARCH_CONNECTIONS of them and no more, the rest queue for one.
    with concurrent.futures.ThreadPoolExecutor(len(asked)) as pool:
        with connect(database, "public") as locker:  # not autocommit: the lock lasts
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            futures = [pool.submit(top_hit, query) for _, query in asked]
            try:
                assert wait_until(lambda: blocked() >= SEARCH_CONNECTIONS, 30)
                time.sleep(1.0)  # time for any further connection to show up
                assert blocked() == SEARCH_CONNECTIONS
            finally:
                locker.rollback()  # lets them all through
        found = [f.result() for f in futures]
    assert found == [ids[key] for key, _ in asked]


# -- the answer's bound ---------------------------------------------------------------

#: A bound small enough that a few long results fill it.
SMALL_ANSWER = 30_000


def _long_documents(conn: Connection, embedder: Embedder, documents: int) -> None:
    """``documents`` documents of the built-in source, two passages of about 1,000
    characters each, document i's a little farther from the query "a passage" than
    document i - 1's (so the order is the document ids', whatever path the HNSW scan
    takes: with one vector for all, which of the tied passages it met first varied)."""
    query = embedder.embed(["a passage"])[0].astype(np.float64)
    away = np.zeros_like(query)
    away[int(np.argmin(np.abs(query)))] = 1.0
    away -= away.dot(query) * query  # orthogonal to the query
    away /= np.linalg.norm(away)
    conn.execute(
        "INSERT INTO source_documents (source_id, doc_key, state, chunk_count) "
        "SELECT s.id, i::text, 'indexed', 2 FROM sources s, generate_series(1, %s) i "
        "WHERE s.name = 'documents'",
        (documents,),
    )
    vectors = []
    for i in range(1, documents + 1):
        v = query + 0.01 * i * away  # cosine to the query: 1 / sqrt(1 + (0.01 i)^2)
        vectors.append((str(i), (v / np.linalg.norm(v)).astype(np.float32)))
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO chunks (content, embedding, state, document_id, source_id, doc_key, "
            "position, char_start, char_end) "
            "SELECT repeat('passage ', 124) || d.doc_key || '/' || p, %s, 'embedded', d.id, "
            "d.source_id, d.doc_key, p, p * 1000, p * 1000 + 992 + length(d.doc_key) + 2 "
            "FROM source_documents d, generate_series(0, 1) p WHERE d.doc_key = %s",
            [(vector, key) for key, vector in vectors],
        )


def test_a_document_search_answer_is_cut_to_whole_results_within_its_bound(
    api: Api, settings: Settings, database: str, embedder: Embedder, conn: Connection
) -> None:
    _long_documents(conn, embedder, 150)
    ask = {"query": "a passage", "group": "document", "passages": 2}
    # k over the HNSW scan's width (100) reads the answer in a transaction of its own.
    for k in (20, 150):
        whole = api.client.post("/search", json={**ask, "k": k})
        assert whole.status_code == 200, whole.text
        assert "truncated" not in whole.json()
        assert len(whole.json()["results"]) == k
        with serve(settings, database, embedder, HttpLimits(max_answer_bytes=SMALL_ANSWER)) as cut:
            response = cut.client.post("/search", json={**ask, "k": k})
            assert response.status_code == 200, response.text
            assert len(response.content) <= SMALL_ANSWER
            body = response.json()
            assert body["truncated"] is True
            kept = body["results"]
            # The best results, whole; the next one would not have fitted.
            assert 0 < len(kept) < k
            assert kept == whole.json()["results"][: len(kept)]
            following = json.dumps(whole.json()["results"][len(kept)], separators=(",", ":"))
            assert len(response.content) + len(following) + 1 > SMALL_ANSWER
            # An answer that fits is the same, byte for byte, as without the bound.
            few = cut.client.post("/search", json={**ask, "k": 2})
            assert few.content == api.client.post("/search", json={**ask, "k": 2}).content
            assert "truncated" not in few.json()


def test_a_row_search_answer_is_cut_to_whole_results_within_its_bound(
    api: Api, settings: Settings, database: str, embedder: Embedder, conn: Connection
) -> None:
    vector = embedder.embed(["a long row"])[0]
    conn.execute(
        "INSERT INTO chunks (content, metadata, embedding, state) "
        "SELECT repeat('row ', 500) || i, jsonb_build_object('n', i), %s, 'embedded' "
        "FROM generate_series(1, 60) i",
        (vector,),
    )
    whole = api.client.post("/search", json={"query": "a row", "k": 60}).json()
    assert "truncated" not in whole and len(whole["results"]) == 60
    with serve(settings, database, embedder, HttpLimits(max_answer_bytes=SMALL_ANSWER)) as cut:
        response = cut.client.post("/search", json={"query": "a row", "k": 60})
        assert response.status_code == 200, response.text
        assert len(response.content) <= SMALL_ANSWER
        body = response.json()
        assert body["truncated"] is True
        assert 0 < len(body["results"]) < 60
        assert body["results"] == whole["results"][: len(body["results"])]


def test_a_document_search_stops_reading_where_its_caller_stops(
    settings: Settings, database: str, embedder: Embedder, conn: Connection
) -> None:
    _long_documents(conn, embedder, 150)
    vector = embedder.embed(["a passage"])[0]
    # One connection: a search left early must leave it ready for the next one.
    with Store(database, settings.schema, pool_size=1) as store:
        for k in (20, 150):
            seen: list[str] = []

            def take(hit: DocumentHit, seen: list[str] = seen) -> bool:
                seen.append(hit.key)
                return len(seen) < 3

            hits = store.search_documents(vector, k, passages=2, take=take)
            assert [h.key for h in hits] == ["1", "2"]
            assert seen == ["1", "2", "3"]  # the fourth document was never read
            assert len(store.search_documents(vector, k, passages=2)) == k


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "x", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"query": "x", "k": MAX_K + 1}, 422, f"k: Input should be less than or equal to {MAX_K}"),
        ({"query": ""}, 422, "the query is empty"),
        ({"query": "  \n "}, 422, "the query is empty"),
        ({"k": 3}, 422, "query: Field required"),
        ({"query": "x", "filter": ["a"]}, 422, "filter: Input should be a valid dictionary"),
        ({"query": "x", "filter": {"a": ["\x00"]}}, 422, "filter: Value error, the filter holds"),
        ({"query": "x", "filter": {"\ud800": 1}}, 422, "invalid Unicode"),
        (
            {"query": "x", "group": "document", "source": "a\x00b"},
            422,
            "source: Value error, the source holds a NUL character",
        ),
        (
            {"query": "x", "group": "document", "source": "\ud800"},
            422,
            "source: Value error, the source holds invalid Unicode (a lone surrogate)",
        ),
        ({"query": "q" * (MAX_TEXT_CHARS + 1)}, 413, "query 0 has"),
    ],
)
def test_bad_search_requests(api: Api, body: dict[str, object], status: int, message: str) -> None:
    # json.dumps escapes a lone surrogate (httpx's json= would refuse to send it).
    response = api.client.post(
        "/search", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert message in response.json()["error"]


def _with_each_string(body: object, bad: str) -> Iterator[object]:
    """``body`` once for each string in it (keys included), that string made ``bad``."""
    if isinstance(body, str):
        yield bad
    elif isinstance(body, dict):
        for key, value in body.items():
            yield {bad if k == key else k: v for k, v in body.items()}
            for changed in _with_each_string(value, bad):
                yield {**body, key: changed}
    elif isinstance(body, list):
        for i, value in enumerate(body):
            for changed in _with_each_string(value, bad):
                yield [*body[:i], changed, *body[i + 1 :]]


def test_no_string_of_any_request_makes_a_500(api: Api, conn: Connection) -> None:
    """A NUL character or a lone surrogate in any string of any request body is
    answered (200, or a 4xx with one line), never 500."""
    insert(conn, "a row", metadata='{"lang": "en"}')
    bodies = [
        ("/search", {"query": "x", "filter": {"lang": "en"}}),
        ("/search", {"query": "x", "group": "document", "source": "documents"}),
        ("/embed", {"texts": ["x", "y"]}),
        ("/embed", {"batch_id": "b", "chunks": [{"chunk_id": "c", "content": "x"}]}),
    ]
    for path, body in bodies:
        for bad in ("\x00", "a\x00b", "\ud800", "x\udfff"):
            for changed in _with_each_string(body, bad):
                content = json.dumps(changed)
                response = api.client.post(
                    path, content=content, headers={"content-type": "application/json"}
                )
                assert response.status_code in (200, 400, 413, 422), (content, response.text)
                if response.status_code != 200:
                    error = response.json()["error"]
                    assert error and "\n" not in error, (content, error)


def test_openapi_lists_the_endpoints(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) >= {"/health", "/metrics", "/embed", "/search"}
    assert "get" in paths["/health"] and "get" in paths["/metrics"]
    assert "post" in paths["/embed"] and "post" in paths["/search"]
    embed_schema = schema["components"]["schemas"]["EmbedRequest"]["properties"]
    assert embed_schema["texts"]["maxItems"] == MAX_TEXTS
    search_schema = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert search_schema["k"]["maximum"] == MAX_K
    assert search_schema["query"]["maxLength"] == MAX_TEXT_CHARS


def test_docs_is_one_page_that_needs_nothing_from_the_internet(api: Api) -> None:
    response = api.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for operation in ("GET /health", "GET /metrics", "POST /embed", "POST /search"):
        assert f"<code>{operation}</code>" in page
    assert "EmbedRequest" in page and "SearchRequest" in page
    # Nothing is loaded from anywhere: no script, no style sheet, no remote URL.
    assert "<script" not in page and "<link" not in page
    assert re.search(r"(src|href)=[\"']?(https?:)?//", page) is None
    assert api.client.get("/redoc").status_code == 404


# -- hostile clients ------------------------------------------------------------------


def closed_by_server(sock: socket.socket, within: float = 30.0) -> bool:
    """True once the server closes ``sock`` (a generous bound only detects a hang)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: closed all the same
        pass
    return True


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is and read the whole answer: status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_idle_connections_neither_lock_out_health_nor_stay_open(
    settings: Settings, database: str, embedder: Embedder
) -> None:
    limits = HttpLimits(head_timeout=1.0)
    with serve(settings, database, embedder, limits) as api:
        idle = [socket.create_connection(("127.0.0.1", api.server.port)) for _ in range(80)]
        slow = []
        for _ in range(20):  # a head sent one byte at a time, never finished
            sock = socket.create_connection(("127.0.0.1", api.server.port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHo")
            slow.append(sock)
        try:
            response = api.client.get("/health")
            assert response.status_code == 200, response.text
            assert api.client.post("/embed", json={"texts": ["still served"]}).status_code == 200
            assert all(closed_by_server(sock) for sock in idle + slow)
        finally:
            for sock in idle + slow:
                sock.close()
        # A keep-alive connection is closed the same way once it stops sending.
        assert api.client.get("/health").status_code == 200


def test_past_the_socket_cap_the_oldest_idle_socket_makes_room(
    settings: Settings, database: str, embedder: Embedder
) -> None:
    limits = HttpLimits(head_timeout=600.0, max_connections=8)
    with serve(settings, database, embedder, limits) as api:
        idle = []
        for _ in range(20):
            idle.append(socket.create_connection(("127.0.0.1", api.server.port)))
            time.sleep(0.01)  # in this order on the server too
        try:
            # Each new socket closed the oldest idle ones: /health gets through.
            with httpx.Client(base_url=api.server.url, timeout=30) as fresh:
                assert fresh.get("/health").status_code == 200
            assert closed_by_server(idle[0]) and closed_by_server(idle[10])
        finally:
            for sock in idle:
                sock.close()


def test_a_malformed_content_length_is_a_json_400(api: Api) -> None:
    status, headers, body = raw_request(
        api.server.port,
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 12abc\r\n\r\n{}",
    )
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "invalid HTTP request" in json.loads(body)["error"]


def test_over_the_memory_budget_a_body_is_refused_before_it_is_read(
    settings: Settings, database: str, embedder: Embedder
) -> None:
    # 3 x 400 KB charged for one body passes a 1 MB budget.
    limits = HttpLimits(memory_budget=1_000_000)
    with serve(settings, database, embedder, limits) as api:
        status, body = raw_post(api.server.port, "Content-Length: 400000\r\n", [])
        assert status == 503
        assert "busy" in body["error"]
        assert api.client.post("/embed", json={"texts": ["small"]}).status_code == 200


def test_a_hung_database_leaves_embed_its_own_threads(
    settings: Settings, embedder: Embedder, conn: Connection, database: str
) -> None:
    # More searches than anyio's shared pool has threads (40) hang on a locked table:
    # /embed must still be answered while every one of them is stuck.  Bounds far past
    # the test's length, so that no search can end before the lock does.
    insert(conn, CORPUS["cat"])
    drain(settings, embedder)
    limits = HttpLimits(pool_wait=120, statement_timeout=120, search_deadline=240)
    with serve(settings, database, embedder, limits) as api:
        searches_stuck_while_embed_answers(api, conn, database)


def searches_stuck_while_embed_answers(api: Api, conn: Connection, database: str) -> None:

    def search() -> int:
        response = httpx.post(api.server.url + "/search", json={"query": "cat"}, timeout=60)
        return response.status_code

    def blocked() -> int:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        return int(row["n"]) if row else 0

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        with connect(database, "public") as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            futures = [pool.submit(search) for _ in range(48)]
            try:
                assert wait_until(lambda: blocked() >= SEARCH_CONNECTIONS, 30)
                embedded = httpx.post(api.server.url + "/embed", json={"texts": ["a"]}, timeout=60)
                assert embedded.status_code == 200
                assert not any(f.done() for f in futures)
            finally:
                locker.rollback()
        assert {f.result() for f in futures} <= {200, 503}


def test_a_search_stuck_on_a_lock_ends_at_the_statement_timeout(
    settings: Settings, database: str, embedder: Embedder
) -> None:
    limits = HttpLimits(statement_timeout=0.5)
    with serve(settings, database, embedder, limits) as api:
        with connect(database, "public") as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            try:
                response = api.client.post("/search", json={"query": "x"}, timeout=30)
            finally:
                locker.rollback()
        assert response.status_code == 503
        assert response.json() == {"error": "the search ran past the statement timeout (0.5 s)"}
        assert api.client.post("/search", json={"query": "x"}).status_code == 200


def test_a_search_answers_by_its_deadline_when_the_database_never_does(
    settings: Settings, embedder: Embedder
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        dsn = f"postgresql://indexer@127.0.0.1:{silent.getsockname()[1]}/indexer"
        with serve(settings, dsn, embedder, HttpLimits(search_deadline=1.0)) as api:
            response = api.client.post("/search", json={"query": "x"}, timeout=30)
            assert response.status_code == 503
            assert "did not finish within 1 s" in response.json()["error"]


def test_an_outage_is_logged_once_not_per_request(
    settings: Settings, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        serve(settings, UNREACHABLE, embedder) as api,
        caplog.at_level(logging.DEBUG, logger="indexer.http"),
    ):
        for _ in range(10):
            assert api.client.post("/search", json={"query": "x"}).status_code == 503
            assert api.client.get("/health").status_code == 503
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("indexer")
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "database unavailable" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b'{"query": "x", "filter": {"a": NaN}}', 422, "NaN"),
        (b'{"query": "x", "filter": {"a": Infinity}}', 422, "Infinity"),
        (b'{"query": "x", "filter": {"a": -Infinity}}', 422, "-Infinity"),
        (b'{"query": "x", "filter": {"a": 1e400}}', 422, "out of range"),
        (b'{"query": "x", "filter": {"a": ' + b"7" * 4300 + b"}}", 422, "digits"),
        (b'{"query": "x", "filter": {"a": ' + b"[" * 990 + b"]" * 990 + b"}}", 422, "deep"),
        (b'{"query": "caf\xc3"}', 422, "not valid UTF-8"),
        (b'{"query": "x", "k": true}', 422, "k: Input should be a valid integer"),
        (b'{"query": "x", "k": "5"}', 422, "k: Input should be a valid integer"),
        (b'{"query": "x", "k": 5.0}', 422, "k: Input should be a valid integer"),
        (b'{"query": "x", "filter": {"a": "' + b"y" * 70_000 + b'"}}', 422, "the filter is"),
        (b'{"query": "x", "filter": {"a": [' + b"1," * 5000 + b"1]}}", 413, "JSON values"),
    ],
)
def test_hostile_search_bodies(api: Api, content: bytes, status: int, message: str) -> None:
    response = api.client.post(
        "/search", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"], response.json()


def test_millions_of_tiny_texts_are_refused_before_they_are_parsed(api: Api) -> None:
    # Just under the body limit: 2.1M one-character texts.
    count = (MAX_BODY_BYTES - 20) // 4
    content = b'{"texts": [' + b",".join([b'"a"'] * count) + b"]}"
    assert len(content) <= MAX_BODY_BYTES
    response = api.client.post(
        "/embed", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "JSON values" in response.json()["error"]
    chunk_id = api.client.post("/embed", json={"chunks": [{"chunk_id": True, "content": "a"}]})
    assert chunk_id.status_code == 422


def test_a_token_guards_every_endpoint_but_health(
    settings: Settings, database: str, embedder: Embedder, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("\nfile-token-1\n  file-token-2  \n")
    guarded = dataclasses.replace(settings, http_token="env-token", http_token_file=token_file)
    assert "env-token" not in repr(guarded)
    with serve(guarded, database, embedder) as api:
        health = api.client.get("/health")
        assert health.status_code == 200 and "token" not in health.text
        for path in ("/metrics", "/openapi.json"):
            assert api.client.get(path).status_code == 401
        refused = api.client.post("/embed", json={"texts": ["a"]})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in refused.json()["error"]
        wrong = api.client.post(
            "/embed", json={"texts": ["a"]}, headers={"authorization": "Bearer nope"}
        )
        assert (wrong.status_code, wrong.json()) == (401, {"error": "the token is not valid"})
        for token in ("env-token", "file-token-1", "file-token-2"):
            ok = api.client.post(
                "/embed", json={"texts": ["a"]}, headers={"authorization": f"Bearer {token}"}
            )
            assert ok.status_code == 200, token


def test_an_unreadable_token_file_is_one_clear_line(
    settings: Settings, database: str, embedder: Embedder, tmp_path: Path
) -> None:
    missing = dataclasses.replace(settings, http_token_file=tmp_path / "absent")
    with pytest.raises(ConfigurationError, match=r"INDEXER_HTTP_TOKEN_FILE=.* cannot be read"):
        create_app(missing, dsn=database, embedder=embedder)
    (tmp_path / "blank").write_text("\n  \n")
    blank = dataclasses.replace(settings, http_token_file=tmp_path / "blank")
    with pytest.raises(ConfigurationError, match="holds no token"):
        create_app(blank, dsn=database, embedder=embedder)
