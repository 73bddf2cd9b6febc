"""A database with something of everything the web console shows: embedded, pending and
failed rows, a source whose documents are indexed, pending and failed, a long note with
a known passage in its middle, and an hour of batches in the events (an earlier daemon,
stopped, and one that wrote batches in the last minute and is still counted active)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from indexer.db.connect import Connection
from indexer.embedding import Embedder
from indexer.settings import Settings
from indexer.store import Store
from indexer.worker import Worker
from tests.helpers import CORPUS

#: The passage a search must find, in the middle of a long note (well past its first
#: window of tokens).
NEEDLE = (
    "Every morning at dawn the lighthouse keeper fed sardines to the seagulls that "
    "nested on the rocks below the lamp."
)
SOURCE = "public.notes"
ROW_ERROR = "embedding failed: the text holds nothing the model can read (test)"
DOCUMENT_ERROR = "cannot read source public.notes: permission denied for table notes (test)"


def filler(topic: str, n: int) -> str:
    return " ".join(
        f"Paragraph {n} about {topic}: the planner weighs sequential scans against index "
        f"scans, vacuum reclaims dead tuples, and replication keeps standbys in step "
        f"(sentence {i})."
        for i in range(6)
    )


def long_note() -> str:
    paragraphs = [filler("PostgreSQL internals", n) for n in range(8)]
    paragraphs.insert(5, NEEDLE)
    return "\n\n".join(paragraphs)


def note_text() -> str:
    """The long note as its source reads it (title and body, joined by a blank line)."""
    return f"Database notes\n\n{long_note()}"


@dataclass(frozen=True)
class ConsoleData:
    failed_row: int
    pending_rows: list[int]
    needle_key: str
    needle_start: int
    failed_document: str


def batches(conn: Connection, worker: uuid.UUID, minutes_ago: range, rows: int) -> None:
    """batch_completed events, one every minute of ``minutes_ago``, and for minute 0 one
    every 5 s of the last 25 (the rates count the last minute: those stay in it for 35 s
    more, however slowly a test goes on to read them)."""
    for minute in minutes_ago:
        seconds = [minute * 60] if minute else [25, 20, 15, 10, 5]
        for ago in seconds:
            conn.execute(
                "INSERT INTO events (kind, worker_id, batch_id, at, row_count, reused_count,"
                " token_count, claim_ms, embed_ms, write_ms)"
                " VALUES ('batch_completed', %s, %s, now() - make_interval(secs => %s),"
                " %s, %s, %s, 5, 900, 20)",
                (worker, uuid.uuid4(), ago, rows + minute % 7 * 3, rows // 4, rows * 60),
            )


def populate(conn: Connection, settings: Settings, embedder: Embedder) -> ConsoleData:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, title text, body text, lang text)")
    conn.execute("SELECT add_source('notes', NULL, ARRAY['title', 'body'], ARRAY['lang'])")
    conn.execute(
        "INSERT INTO notes VALUES (1, 'Database notes', %s, 'en'),"
        " (2, 'Weather', 'Heavy rain is expected across the region tomorrow.', 'en'),"
        " (3, 'Chats', 'Les chats dorment au soleil tout l''apres-midi.', 'fr')",
        (long_note(),),
    )
    conn.execute(
        "INSERT INTO chunks (content, metadata) SELECT t, jsonb_build_object('topic', k)"
        " FROM unnest(%s::text[], %s::text[]) AS u(k, t)",
        (list(CORPUS), list(CORPUS.values())),
    )
    assert settings.database_url is not None
    with Store(settings.database_url, settings.schema) as store:
        Worker(settings, store, embedder).run(once=True)
    # A row and a document parked as failed, as the daemon parks them.
    failed = conn.execute(
        "INSERT INTO chunks (content) VALUES ('a row the model could not read') RETURNING id"
    ).fetchone()
    assert failed is not None
    conn.execute(
        "UPDATE chunks SET state = 'failed', attempts = 5, last_error = %s WHERE id = %s",
        (ROW_ERROR, failed["id"]),
    )
    assert failed is not None
    conn.execute(
        "UPDATE source_documents SET state = 'failed', attempts = 5, last_error = %s"
        " WHERE doc_key = '3' AND source_id = (SELECT id FROM sources WHERE name = %s)",
        (DOCUMENT_ERROR, SOURCE),
    )
    pending = conn.execute(
        "INSERT INTO chunks (content) VALUES ('waiting one'), ('waiting two'), ('waiting three')"
        " RETURNING id"
    ).fetchall()
    earlier, live = uuid.uuid4(), uuid.uuid4()
    conn.execute("INSERT INTO events (kind, worker_id, at) VALUES ('worker_started', %s,"
                 " now() - interval '55 minutes')", (earlier,))  # fmt: skip
    batches(conn, earlier, range(54, 20, -1), 40)
    conn.execute("INSERT INTO events (kind, worker_id, at) VALUES ('worker_stopped', %s,"
                 " now() - interval '20 minutes')", (earlier,))  # fmt: skip
    batches(conn, live, range(12, -1, -1), 24)
    start = note_text().index(NEEDLE)
    return ConsoleData(
        failed_row=int(failed["id"]),
        pending_rows=[int(r["id"]) for r in pending],
        needle_key="1",
        needle_start=start,
        failed_document="3",
    )
