"""The daemon's document work on a real database: chunk, reuse, replace, guard."""

from __future__ import annotations

import dataclasses
import itertools
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from indexer.chunking import chunk_text
from indexer.db.connect import Connection, connect
from indexer.embedding import Embedder
from indexer.exceptions import DatabaseUnavailable
from indexer.limits import CHUNK_MAX_CHARS
from indexer.settings import Settings
from indexer.store import Store
from indexer.testing import CountingEmbedder
from indexer.worker import Worker

from ..helpers import wait_until
from .test_sources_sql import apply_changes
from .test_worker import drain, insert

#: Paragraphs of distinct prose, so that chunks (and their hashes) differ.
WORDS = [
    "database",
    "index",
    "vector",
    "query",
    "table",
    "row",
    "column",
    "planner",
    "cache",
    "memory",
    "disk",
    "page",
    "lock",
    "transaction",
    "commit",
    "replica",
    "backup",
    "schema",
    "trigger",
    "function",
    "view",
    "sequence",
    "tuple",
    "heap",
]


def paragraph(n: int, words: int = 70) -> str:
    rng = np.random.default_rng(n)
    body = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), words))
    return f"Paragraph {n} says: {body}."


def document(paragraphs: Sequence[int]) -> str:
    return "\n\n".join(paragraph(n) for n in paragraphs)


def add_document(conn: Connection, text: str, metadata: str = "{}") -> int:
    row = conn.execute(
        "INSERT INTO documents (content, metadata) VALUES (%s, %s) RETURNING id", (text, metadata)
    ).fetchone()
    assert row is not None
    return int(row["id"])


def chunks_of(conn: Connection, key: int | str, source: str = "documents") -> list[dict[str, Any]]:
    return list(
        conn.execute(
            "SELECT c.* FROM chunks c JOIN sources s ON s.id = c.source_id"
            " WHERE s.name = %s AND c.doc_key = %s ORDER BY c.position",
            (source, str(key)),
        )
    )


def doc_row(conn: Connection, key: int | str, source: str = "documents") -> dict[str, Any]:
    row = conn.execute(
        "SELECT d.* FROM source_documents d JOIN sources s ON s.id = d.source_id"
        " WHERE s.name = %s AND d.doc_key = %s",
        (source, str(key)),
    ).fetchone()
    assert row is not None
    return dict(row)


def expected_chunks(settings: Settings, embedder: Embedder, text: str) -> list[str]:
    chunking = chunk_text(
        text,
        embedder,
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap,
        max_chunks=settings.document_max_chunks,
    )
    return [c.text for c in chunking.chunks]


def test_a_long_document_becomes_its_chunks_with_spans_and_exact_vectors(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    text = document(range(12))
    key = add_document(conn, text, '{"lang": "en"}')
    worker = drain(settings, embedder)
    rows = chunks_of(conn, key)
    assert [r["content"] for r in rows] == expected_chunks(settings, embedder, text)
    assert len(rows) > 5
    assert [r["position"] for r in rows] == list(range(len(rows)))
    for r in rows:
        assert text[r["char_start"] : r["char_end"]] == r["content"]
        assert r["metadata"] == {"lang": "en"}
        assert r["state"] == "embedded"
    vectors = embedder.embed([r["content"] for r in rows])
    for r, want in zip(rows, vectors, strict=True):
        assert float(np.dot(r["embedding"].to_numpy(), want)) > 0.99999
    doc = doc_row(conn, key)
    assert (doc["state"], doc["chunk_count"], doc["truncated"]) == ("indexed", len(rows), False)
    event = conn.execute("SELECT * FROM events WHERE kind = 'batch_completed'").fetchone()
    assert event is not None
    assert event["row_count"] == len(rows)
    assert event["detail"]["documents"] == [doc["id"]]
    assert worker.rows_written == len(rows)


def test_editing_one_paragraph_re_embeds_only_the_chunks_it_touches(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    text = document(range(60))
    key = add_document(conn, text)
    drain(settings, embedder)
    before = chunks_of(conn, key)
    assert len(before) >= 50
    edited = text.replace(paragraph(30), paragraph(1000))
    conn.execute("UPDATE documents SET content = %s WHERE id = %s", (edited, key))
    counting = CountingEmbedder(embedder)
    drain(settings, counting)
    after = chunks_of(conn, key)
    assert [r["content"] for r in after] == expected_chunks(settings, embedder, edited)
    new_texts = {r["content"] for r in after} - {r["content"] for r in before}
    assert sorted(counting.texts) == sorted(new_texts)
    assert 1 <= len(counting.texts) <= 3
    assert not {r["id"] for r in before} & {r["id"] for r in after}  # the set was replaced


def test_re_importing_unchanged_documents_calls_no_model(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    texts = [document(range(n, n + 4)) for n in (0, 10, 20)]
    for t in texts:
        add_document(conn, t)
    drain(settings, embedder)
    first = conn.execute("SELECT count(*) AS n FROM chunks").fetchone()
    conn.execute("DELETE FROM documents")
    apply_changes(conn)  # the daemon's first step
    assert conn.execute("SELECT count(*) AS n FROM chunks").fetchone() == {"n": 0}
    for t in texts:
        add_document(conn, t)
    last = conn.execute("SELECT max(id) AS id FROM events").fetchone()
    counting = CountingEmbedder(embedder)
    drain(settings, counting)
    assert counting.texts == []
    assert conn.execute("SELECT count(*) AS n FROM chunks").fetchone() == first
    reused = conn.execute(
        "SELECT sum(reused_count) AS reused, sum(row_count) AS n FROM events"
        " WHERE kind = 'batch_completed' AND id > %s",
        (last["id"],),  # type: ignore[index]
    ).fetchone()
    assert reused is not None and first is not None
    assert reused["reused"] == reused["n"] == first["n"]


def test_an_edit_during_embedding_never_writes_the_stale_chunks(
    settings: Settings, embedder: Embedder, conn: Connection, database: str
) -> None:
    key = add_document(conn, document(range(8)))
    new_text = document(range(100, 108))
    other = connect(database, "public", autocommit=True)

    class EditsOnFirstCall(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            if not self.texts:
                other.execute("UPDATE documents SET content = %s WHERE id = %s", (new_text, key))
                apply_changes(other)  # as another daemon would, before this one writes
            return super().embed(texts)

    try:
        drain(settings, EditsOnFirstCall(embedder))
    finally:
        other.close()
    rows = chunks_of(conn, key)
    assert [r["content"] for r in rows] == expected_chunks(settings, embedder, new_text)
    doc = doc_row(conn, key)
    assert (doc["state"], doc["version"]) == ("indexed", 2)
    stale = conn.execute(
        "SELECT detail FROM events WHERE kind = 'batch_completed' ORDER BY id LIMIT 1"
    ).fetchone()
    assert stale is not None and stale["detail"]["stale_documents"] == 1


def test_a_reader_sees_the_old_chunk_set_or_the_new_one_never_a_mix(
    settings: Settings, embedder: Embedder, conn: Connection, database: str
) -> None:
    key = add_document(conn, document(range(6)))
    drain(settings, embedder)
    mixes: list[set[int]] = []
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        reader = connect(database, "public", autocommit=True)
        try:
            while not done.is_set():
                contents = reader.execute(
                    "SELECT string_agg(content, ' ') AS t FROM chunks WHERE doc_key = %s",
                    (str(key),),
                ).fetchone()
                assert contents is not None
                # Version v's paragraphs are numbered 10v to 10v+5.
                versions = {
                    int(n) // 10 for n in re.findall(r"Paragraph (\d+) says", contents["t"] or "")
                }
                seen.update(versions)
                if len(versions) > 1:
                    mixes.append(versions)
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for version in range(2, 6):
            text = document(range(10 * version, 10 * version + 6))
            conn.execute("UPDATE documents SET content = %s WHERE id = %s", (text, key))
            drain(settings, embedder)

            def read_it(version: int = version) -> bool:
                return version in seen

            # The reader has read this version before the next replaces it: its reads
            # span every swap, however the threads were scheduled.
            assert wait_until(read_it, 60)
    finally:
        done.set()
        thread.join()
    assert mixes == []
    assert len(seen) >= 2


def test_a_document_over_the_limits_is_indexed_cut_and_says_so(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    long_key = add_document(conn, document(range(40)))
    many_key = add_document(conn, document(range(100, 140)))
    fits = add_document(conn, "short")
    drain(dataclasses.replace(settings, document_max_chars=3000), embedder)
    rows = chunks_of(conn, long_key)
    assert max(r["char_end"] for r in rows) <= 3000
    assert doc_row(conn, long_key)["truncated"] is True
    assert doc_row(conn, fits)["truncated"] is False
    conn.execute("UPDATE documents SET content = content || ' ' WHERE id = %s", (many_key,))
    drain(dataclasses.replace(settings, document_max_chunks=3), embedder)
    assert len(chunks_of(conn, many_key)) == 3
    assert doc_row(conn, many_key)["truncated"] is True


def test_a_document_without_a_space_becomes_chunks_no_longer_than_the_bound(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    # 1,000,000 letters without a space are one [UNK] token to the tokenizer: they used to
    # be one chunk of 1,000,000 characters (and a search returned all of them).
    rng = np.random.default_rng(7)
    text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 1_000_000))
    key = add_document(conn, text)
    drain(settings, embedder)
    rows = chunks_of(conn, key)
    assert settings.chunk_max_chars == CHUNK_MAX_CHARS
    assert len(rows) == -(-len(text) // CHUNK_MAX_CHARS)
    assert max(len(r["content"]) for r in rows) == CHUNK_MAX_CHARS
    for r in rows:
        assert text[r["char_start"] : r["char_end"]] == r["content"]
        assert r["state"] == "embedded"
    assert rows[0]["char_start"] == 0 and rows[-1]["char_end"] == len(text)
    assert all(b["char_start"] <= a["char_end"] for a, b in itertools.pairwise(rows))
    assert doc_row(conn, key)["truncated"] is False
    # A smaller bound, and fewer chunks than the text needs: cut, and it says so.
    conn.execute("UPDATE documents SET content = content || 'z' WHERE id = %s", (key,))
    drain(dataclasses.replace(settings, chunk_max_chars=1000, document_max_chunks=50), embedder)
    rows = chunks_of(conn, key)
    assert len(rows) == 50
    assert max(len(r["content"]) for r in rows) == 1000
    assert doc_row(conn, key)["truncated"] is True


def test_empty_documents_have_no_chunks_and_direct_rows_still_work(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    full = add_document(conn, "a document with words")
    drain(settings, embedder)
    conn.execute("UPDATE documents SET content = '  ' WHERE id = %s", (full,))
    (row_id,) = insert(conn, "a row inserted straight into chunks")
    drain(settings, embedder)
    assert chunks_of(conn, full) == []
    assert (doc_row(conn, full)["state"], doc_row(conn, full)["chunk_count"]) == ("indexed", 0)
    direct = conn.execute("SELECT state, document_id FROM chunks WHERE id = %s", (row_id,))
    assert direct.fetchone() == {"state": "embedded", "document_id": None}


@pytest.mark.parametrize(
    ("key_type", "keys"),
    [
        ("bigint", ["1", "2", "3"]),
        ("uuid", [f"00000000-0000-0000-0000-00000000000{i}" for i in (1, 2, 3)]),
        ("text", ["alpha", "Beta", "gamma delta"]),
    ],
)
def test_a_source_table_is_indexed_and_kept_in_step(
    settings: Settings, embedder: Embedder, conn: Connection, key_type: str, keys: list[str]
) -> None:
    conn.execute('CREATE SCHEMA "App Data"')
    conn.execute(
        f'CREATE TABLE "App Data"."Tickets" (k {key_type} PRIMARY KEY, title text, body text,'
        " author text, priority int, views int NOT NULL DEFAULT 0)"
    )
    for n, k in enumerate(keys):
        conn.execute(
            'INSERT INTO "App Data"."Tickets" (k, title, body, author, priority)'
            " VALUES (%s, %s, %s, 'ann', %s)",
            (k, f"Ticket {n}", document([n]), n),
        )
    conn.execute(
        "SELECT add_source(%s, NULL, ARRAY['title', 'body'], ARRAY['author', 'priority'])",
        ('"App Data"."Tickets"',),
    )
    name = '"App Data"."Tickets"'
    drain(settings, embedder)
    for n, k in enumerate(keys):
        rows = chunks_of(conn, k, name)
        assert rows, k
        assert rows[0]["content"].startswith(f"Ticket {n}\n\nParagraph {n}")
        assert rows[0]["metadata"] == {"author": "ann", "priority": n}
    counting = CountingEmbedder(embedder)
    conn.execute('UPDATE "App Data"."Tickets" SET views = views + 1')
    drain(settings, counting)
    assert counting.texts == []
    assert {doc_row(conn, k, name)["version"] for k in keys} == {1}
    conn.execute('UPDATE "App Data"."Tickets" SET body = %s WHERE k = %s', ("rewritten", keys[0]))
    conn.execute('DELETE FROM "App Data"."Tickets" WHERE k = %s', (keys[1],))
    apply_changes(conn)  # the daemon's first step
    assert chunks_of(conn, keys[1], name) == []
    drain(settings, counting)
    assert [r["content"] for r in chunks_of(conn, keys[0], name)] == ["Ticket 0\n\nrewritten"]
    conn.execute('TRUNCATE "App Data"."Tickets"')
    apply_changes(conn)
    count = conn.execute("SELECT count(*) AS n FROM chunks WHERE doc_key IS NOT NULL")
    assert count.fetchone() == {"n": 0}


def test_a_source_that_cannot_be_read_fails_its_documents_with_one_line(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
    conn.execute("DROP TABLE notes")
    add_document(conn, "the other source keeps working")
    drain(dataclasses.replace(settings, max_attempts=1), embedder)
    failed = list(
        conn.execute(
            "SELECT state, last_error FROM source_documents d JOIN sources s"
            " ON s.id = d.source_id WHERE s.name = 'public.notes'"
        )
    )
    assert [r["state"] for r in failed] == ["failed", "failed"], failed
    assert [r["last_error"] for r in failed] == [
        "cannot read source public.notes: the table public.notes of source public.notes is gone"
    ] * 2
    assert "\n" not in failed[0]["last_error"]
    assert doc_row(conn, 1)["state"] == "indexed"


def test_stopping_mid_document_keeps_its_vectors_for_the_next_attempt(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    key = add_document(conn, document(range(40)))
    stop = threading.Event()

    class StopsAfterOneCall(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            stop.set()
            return super().embed(texts)

    first = StopsAfterOneCall(embedder)
    assert settings.database_url is not None
    small = dataclasses.replace(settings, batch_size=8)
    with Store(settings.database_url, settings.schema) as store:
        Worker(small, store, first, stop_event=stop).run(once=True)
    assert len(first.texts) == 8
    assert chunks_of(conn, key) == []
    assert doc_row(conn, key)["state"] == "pending"
    second = CountingEmbedder(embedder)
    drain(small, second)
    total = len(chunks_of(conn, key))
    assert len(second.texts) == total - 8


def test_rows_and_documents_take_turns(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    insert(conn, *(f"row number {n} of the direct queue" for n in range(96)))
    for n in range(4):
        add_document(conn, document(range(10 * n, 10 * n + 2)))
    drain(
        dataclasses.replace(settings, claim_size=32, batch_size=32, document_claim_size=1), embedder
    )
    kinds = [
        "document" if r["documents"] is not None else "rows"
        for r in conn.execute(
            "SELECT detail->'documents' AS documents FROM events"
            " WHERE kind = 'batch_completed' ORDER BY id"
        )
    ]
    assert kinds.count("rows") == 3 and kinds.count("document") == 4
    # Neither queue waits for the other to drain: they alternate, claim by claim.
    assert kinds[:6] in (["document", "rows"] * 3, ["rows", "document"] * 3)


def test_a_document_the_chunker_fails_on_fails_alone(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    class FailsOnPoison(CountingEmbedder):
        def token_offsets(self, text: str) -> Sequence[tuple[int, int]]:
            if "POISON" in text:
                raise ValueError("the tokenizer gave up")
            return super().token_offsets(text)

    bad = add_document(conn, "a POISON document")
    good = add_document(conn, "a fine document")
    drain(dataclasses.replace(settings, max_attempts=1), FailsOnPoison(embedder))
    failed = doc_row(conn, bad)
    assert failed["state"] == "failed"
    assert failed["last_error"] == "could not be chunked: ValueError: the tokenizer gave up"
    assert doc_row(conn, good)["state"] == "indexed"


def test_a_locked_source_table_holds_up_only_its_own_documents(
    settings: Settings, embedder: Embedder, conn: Connection, database: str
) -> None:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['body'])")
    conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
    add_document(conn, "the other source goes on")
    with connect(database, "public") as holder:
        holder.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")  # a long ALTER, say
        done = threading.Thread(target=drain, args=(settings, embedder), daemon=True)
        done.start()
        # Bounds a hang only (before, the daemon waited for the lock as long as it was held).
        done.join(timeout=120)
        assert not done.is_alive()
        holder.rollback()
    assert doc_row(conn, 1)["state"] == "indexed"
    waiting = conn.execute(
        "SELECT state, attempts, last_error, retry_at > now() AS later FROM source_documents d"
        " JOIN sources s ON s.id = d.source_id WHERE s.name = 'public.notes'"
    ).fetchall()
    assert waiting == [{"state": "pending", "attempts": 0, "last_error": None, "later": True}] * 2


def _small_documents(conn: Connection, count: int) -> list[int]:
    """``count`` documents of a few chunks each (so that batches of 4 finish some)."""
    return [add_document(conn, document(range(5 * n, 5 * n + 4))) for n in range(count)]


def _check_indexed(
    conn: Connection, settings: Settings, embedder: Embedder, keys: list[int]
) -> None:
    texts = {int(r["id"]): r["content"] for r in conn.execute("SELECT id, content FROM documents")}
    for key in keys:
        assert doc_row(conn, key)["state"] == "indexed"
        chunks = chunks_of(conn, key)
        assert [c["content"] for c in chunks] == expected_chunks(settings, embedder, texts[key])
        want = embedder.embed([c["content"] for c in chunks])
        for c, vector in zip(chunks, want, strict=True):
            assert float(np.dot(c["embedding"].to_numpy(), vector)) > 0.99999


def test_a_write_cut_off_loses_no_document(
    settings: Settings, embedder: Embedder, conn: Connection
) -> None:
    """The database goes away during the first write of documents (a store whose write
    raises as the store does when its connection is cut): the loop waits out the
    outage; the write's documents go back to the queue and are indexed again, each once,
    exactly."""
    keys = _small_documents(conn, 6)
    calls: list[int] = []

    class CutOnce(Store):
        def replace_documents(self, *args: Any, **kwargs: Any) -> tuple[list[int], list[int], int]:
            calls.append(len(args[2]))
            if len(calls) == 1:
                raise DatabaseUnavailable("connection lost (injected by the test)")
            return super().replace_documents(*args, **kwargs)

    assert settings.database_url is not None
    small = dataclasses.replace(settings, batch_size=4, document_claim_size=6)
    with CutOnce(settings.database_url, settings.schema) as store:
        Worker(small, store, embedder).run(once=True)
    assert len(calls) > 1
    _check_indexed(conn, settings, embedder, keys)
    row = conn.execute(
        "SELECT count(*) AS n, count(DISTINCT (source_id, doc_key, position)) AS distinct_n"
        " FROM chunks WHERE document_id IS NOT NULL"
    ).fetchone()
    assert row is not None and row["n"] == row["distinct_n"]
