"""The web console's shell and JSON endpoints over HTTP (the browser tests drive the page
itself: test_console_browser.py)."""

from __future__ import annotations

import dataclasses
import gzip
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from indexer.db.connect import Connection
from indexer.embedding import Embedder
from indexer.http.console import plain, shell
from indexer.settings import Settings
from indexer.store import Store
from tests.console_data import DOCUMENT_ERROR, NEEDLE, ROW_ERROR, SOURCE, ConsoleData, populate
from tests.integration.test_http import Api, samples, serve

TOKEN = "console-test-token"
BEARER = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def guarded(settings: Settings, database: str, embedder: Embedder) -> Iterator[Api]:
    """The API with a token, and the console in it."""
    with serve(dataclasses.replace(settings, http_token=TOKEN), database, embedder) as api:
        yield api


@pytest.fixture
def data(conn: Connection, settings: Settings, embedder: Embedder) -> ConsoleData:
    return populate(conn, settings, embedder)


def test_the_shell_loads_without_a_token_and_the_data_needs_one(guarded: Api) -> None:
    client = guarded.client
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assets = [a for a in re.findall(r'(?:src|href)="([^"#]+)"', page.text)]
    assert len(assets) == 3 and assets[0] == "data:,", assets
    for asset in assets[1:]:
        answer = client.get("/" + asset)
        assert answer.status_code == 200, asset
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    for path in ("/console/api/overview", "/console/api/failures", "/console/api/throughput"):
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers=BEARER).status_code == 200, path
    posted = client.post("/console/api/retry", json={"rows": [1]})
    assert posted.status_code == 401


def test_the_assets_are_cached_by_version_revalidated_and_gzipped(guarded: Api) -> None:
    client = guarded.client
    files = shell()
    script = client.get(f"/console/console.js?v={files.script.version}")
    assert script.content == files.script.body  # httpx decoded the gzip
    assert script.headers["content-encoding"] == "gzip"
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    stale = client.get("/console/console.js?v=old")
    assert stale.headers["cache-control"] == "no-cache"
    again = client.get("/console/console.js", headers={"if-none-match": script.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    plain_page = client.get("/", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain_page.headers
    assert plain_page.headers["etag"] != client.get("/").headers["etag"]
    with client.stream("GET", "/", headers={"accept-encoding": "gzip"}) as zipped:
        sent = b"".join(zipped.iter_raw())
    assert gzip.decompress(sent) == files.page.body
    # Small enough for a slow link: one page, one script, one style sheet.
    assets = (files.page, files.script, files.style)
    assert sum(len(a.body) for a in assets) < 64 * 1024, [len(a.body) for a in assets]
    assert sum(len(a.gzipped) for a in assets) < 16 * 1024, [len(a.gzipped) for a in assets]


def test_nothing_is_loaded_from_elsewhere() -> None:
    files = shell()
    page = files.page.body.decode()
    style = files.style.body.decode()
    script = files.script.body.decode()
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', page))
    assert "url(" not in style and "@import" not in style
    # The only absolute URL in the script is SVG's namespace, which names, never loads.
    assert re.findall(r"https?://[^\"'`\s]+", script) == ["http://www.w3.org/2000/svg"]
    assert "innerHTML" not in script and "eval(" not in script


def test_the_overview_is_what_status_reads(
    guarded: Api, data: ConsoleData, settings: Settings
) -> None:
    overview = guarded.client.get("/console/api/overview", headers=BEARER).json()
    assert settings.database_url is not None
    with Store(settings.database_url, settings.schema) as store:
        status, sources = plain(store.status()), plain(store.source_status())
    assert overview["status"].keys() == status.keys()
    moving = {"rows_per_second", "eta", "oldest_pending_age", "passages_per_second"}
    for key, value in status.items():
        if key not in moving:
            assert overview["status"][key] == value, key
    assert (overview["status"]["backlog"], overview["status"]["failed"]) == (3, 1)
    assert overview["status"]["active_workers"] == 1
    assert overview["status"]["rows_per_second"] > 0
    [notes] = [s for s in overview["sources"] if s["source"] == SOURCE]
    assert (notes["documents"], notes["indexed"], notes["failed"]) == (3, 2, 1)
    assert [s["source"] for s in overview["sources"]] == [s["source"] for s in sources]
    values = samples(guarded.client.get("/metrics", headers=BEARER).text)
    assert values[("indexer_backlog_rows", frozenset())] == overview["status"]["backlog"]
    assert values[("indexer_failed_rows", frozenset())] == overview["status"]["failed"]
    labels = frozenset({("source", SOURCE), ("state", "failed")})
    assert values[("indexer_source_documents", labels)] == notes["failed"]


def test_failures_list_rows_and_documents_with_their_errors(
    guarded: Api, data: ConsoleData
) -> None:
    body = guarded.client.get("/console/api/failures", headers=BEARER).json()
    assert [(r["id"], r["attempts"], r["last_error"]) for r in body["rows"]] == [
        (data.failed_row, 5, ROW_ERROR)
    ]
    assert [(d["source"], d["key"], d["last_error"]) for d in body["documents"]] == [
        (SOURCE, data.failed_document, DOCUMENT_ERROR)
    ]
    assert body["limit"] == 100
    one = guarded.client.get("/console/api/failures?limit=1", headers=BEARER)
    assert one.json()["limit"] == 1
    for bad in ("0", "x", "1001", "-1"):
        refused = guarded.client.get(f"/console/api/failures?limit={bad}", headers=BEARER)
        assert refused.status_code == 422
        assert refused.json() == {"error": "limit must be an integer from 1 to 1000"}


def test_retry_requeues_a_failed_row_or_a_sources_documents(
    guarded: Api, data: ConsoleData, conn: Connection
) -> None:
    def post(body: Any) -> httpx.Response:
        return guarded.client.post("/console/api/retry", json=body, headers=BEARER)

    assert post({"rows": [data.failed_row]}).json() == {"rows": [data.failed_row]}
    row = conn.execute("SELECT state, attempts, last_error FROM chunks WHERE id = %s",
                       (data.failed_row,)).fetchone()  # fmt: skip
    assert row == {"state": "pending", "attempts": 0, "last_error": None}
    assert post({"rows": [data.failed_row]}).json() == {"rows": []}  # no longer failed
    one = {"source": SOURCE, "keys": ["no such key", data.failed_document]}
    assert post(one).json() == {"documents": {SOURCE: 1}}  # one document, by its key
    document = conn.execute("SELECT state FROM source_documents WHERE doc_key = %s",
                            (data.failed_document,)).fetchone()  # fmt: skip
    assert document == {"state": "pending"}
    assert post(one).json() == {"documents": {}}  # no longer failed
    conn.execute("UPDATE source_documents SET state = 'failed' WHERE doc_key = %s",
                 (data.failed_document,))  # fmt: skip
    assert post({"source": SOURCE}).json() == {"documents": {SOURCE: 1}}  # all of them
    document = conn.execute("SELECT state FROM source_documents WHERE doc_key = %s",
                            (data.failed_document,)).fetchone()  # fmt: skip
    assert document == {"state": "pending"}
    unknown = post({"source": "nope"})
    assert (unknown.status_code, unknown.json()) == (422, {"error": "no source named nope"})
    bodies: list[Any] = [
        {},
        {"rows": []},
        {"rows": [1], "source": SOURCE},
        {"rows": ["1"]},
        [1],
        {"keys": ["1"]},
        {"source": SOURCE, "keys": []},
        {"source": SOURCE, "keys": ["\u0000"]},
    ]
    for bad in bodies:
        assert post(bad).status_code == 422, bad
    not_json = guarded.client.post("/console/api/retry", content=b"{}", headers=BEARER)
    assert not_json.status_code == 422


def test_throughput_is_the_last_hour_minute_by_minute(guarded: Api, conn: Connection) -> None:
    conn.execute(
        "INSERT INTO events (kind, worker_id, at, row_count, reused_count, token_count, detail)"
        " VALUES ('batch_completed', gen_random_uuid(), now() - interval '10 minutes', 7, 2,"
        " 70, '{}'), ('batch_completed', gen_random_uuid(), now() - interval '10 minutes', 30,"
        " 0, 300, '{\"documents\": [1]}'), ('batch_failed', gen_random_uuid(),"
        " now() - interval '10 minutes', 1, 0, 0, '{}'), ('batch_completed',"
        " gen_random_uuid(), now() - interval '2 hours', 99, 0, 0, '{}')"
    )
    minutes = guarded.client.get("/console/api/throughput", headers=BEARER).json()["minutes"]
    assert len(minutes) == 60
    assert [m["minute"] for m in minutes] == sorted(m["minute"] for m in minutes)
    busy = [m for m in minutes if m["batches"] or m["failed_batches"]]
    assert [
        (m["rows"], m["passages"], m["reused"], m["tokens"], m["batches"], m["failed_batches"])
        for m in busy
    ] == [(7, 30, 2, 370, 2, 1)]
    # Ten minutes before the last one (nine if a minute began between the two statements).
    assert minutes.index(busy[0]) in (48, 49)


def test_context_is_the_passage_in_its_document(
    guarded: Api, data: ConsoleData, conn: Connection
) -> None:
    start, end = data.needle_start, data.needle_start + len(NEEDLE)
    passages = [
        {"source": SOURCE, "key": data.needle_key, "char_start": start, "char_end": end},
        {"source": SOURCE, "key": "404", "char_start": 0, "char_end": 5},
        {"source": "documents", "key": "1", "char_start": 0, "char_end": 5},
    ]
    body = {"passages": passages, "around": 30}
    answer = guarded.client.post("/console/api/context", json=body, headers=BEARER)
    assert answer.status_code == 200, answer.text
    found, gone, other = answer.json()["contexts"]
    assert found["passage"] == NEEDLE
    assert len(found["before"]) == 30 and len(found["after"]) == 30
    assert (found["from_start"], found["to_end"]) == (False, False)
    assert gone is None and other is None
    head = {"source": SOURCE, "key": "2", "char_start": 0, "char_end": 7}
    answer = guarded.client.post(
        "/console/api/context", json={"passages": [head], "around": 1000}, headers=BEARER
    )
    [weather] = answer.json()["contexts"]
    assert weather["before"] == "" and weather["passage"] == "Weather"
    assert weather["from_start"] and weather["to_end"]
    conn.execute("DROP TABLE notes CASCADE")
    broken = guarded.client.post("/console/api/context", json=body, headers=BEARER)
    assert broken.status_code == 422
    assert broken.json()["error"].startswith("cannot read the documents' text: ")
