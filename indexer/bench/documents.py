"""Section 9: chunked documents, through the real daemon code.

The corpus is the long topics of the Python documentation that ships with the
interpreter (``pydoc_data.topics``: every topic longer than 2,000 characters, cut to
8,000 at a line end), inserted into the built-in ``documents`` table of a scratch
schema and drained by a :class:`~indexer.worker.Worker` (``--once``), which claims the
documents, chunks them (``chunk_tokens``:``chunk_overlap`` of the settings), embeds
the chunks and replaces each document's chunk set.  Three figures, each measured in
one run:

- chunked ingestion: chunk rows/s of a first import (empty vector cache) against
  ``embedder.embed`` alone on the same chunk texts in batches of ``batch_size``, the
  two runs alternating in order, judged on the median of the run-by-run ratios;
- re-import of an unchanged document set: every document deleted and inserted again
  (every chunk a cache hit), against the first import beside it;
- a one-paragraph update of a document of at least 50 chunks (topics joined): the
  model inputs of the drain that follows (a
  :class:`~indexer.embedding.wrappers.CountingEmbedder` records them), against the chunks whose
  span overlaps the changed paragraph plus one on each side (the overlap).

The vector cache is on in every drain, whatever the settings say: the last two figures
are what it is for.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from indexer.bench.backfill import stage_split
from indexer.bench.common import median, paired_ratio, quiet, say, timed
from indexer.bench.context import Context
from indexer.bench.scratch import one, scratch_schema
from indexer.chunking import Chunking, chunk_text
from indexer.db import connect as db
from indexer.embedding import TextEmbedder
from indexer.exceptions import IndexerError
from indexer.settings import Settings

#: Topics shorter than this are left out: the section is about documents that chunk.
MIN_CHARS = 2_000
#: Characters kept of each topic (cut at a line end).
MAX_CHARS = 8_000
#: The updated document has at least this many chunks.
UPDATE_CHUNKS = 50
#: The edited paragraph has at least this many words (prose, not a heading or code).
PARAGRAPH_WORDS = 40
#: What the edit adds to the middle paragraph.
EDIT = " This sentence was added by an edit of this one paragraph."

_BLANK_LINES = re.compile(r"\n{3,}")


@dataclasses.dataclass(frozen=True)
class Topic:
    name: str
    text: str


def _clean(text: str) -> str:
    """Trailing spaces dropped, runs of blank lines made one (paragraphs stay apart)."""
    lines = [line.rstrip() for line in text.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    end = text.rfind("\n", 0, max_chars)
    return text[: end if end > max_chars // 2 else max_chars].rstrip()


def long_topics() -> list[Topic]:
    """Every Python documentation topic longer than :data:`MIN_CHARS`, by name, whole."""
    from pydoc_data.topics import topics

    found = []
    for name, body in sorted(topics.items()):
        text = _clean(body)
        if len(text) > MIN_CHARS:
            found.append(Topic(name, text))
    if not found:
        raise IndexerError("pydoc_data.topics has no topic longer than 2,000 characters")
    return found


def document_corpus(count: int) -> list[Topic]:
    """The first ``count`` long topics, each cut to :data:`MAX_CHARS` characters."""
    return [Topic(t.name, _cut(t.text, MAX_CHARS)) for t in long_topics()[:count]]


def _chunks(text: str, embedder: TextEmbedder, settings: Settings) -> Chunking:
    return chunk_text(
        text,
        embedder,
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap,
        max_chunks=settings.document_max_chunks,
        max_chars=settings.chunk_max_chars,
    )


def chunk_texts(topics: list[Topic], embedder: TextEmbedder, settings: Settings) -> list[str]:
    """The chunk texts the daemon makes of ``topics``, in document and position order."""
    return [c.text for t in topics for c in _chunks(t.text, embedder, settings).chunks]


@dataclasses.dataclass(frozen=True)
class Edit:
    """A document before and after an edit of one paragraph, and where the new
    paragraph lies in the new text."""

    before: str
    after: str
    start: int
    end: int


def long_document(embedder: TextEmbedder, settings: Settings) -> Edit:
    """The long topics' paragraphs, joined, up to the paragraph where the text reaches
    :data:`UPDATE_CHUNKS` chunks; and the same text with a sentence added in the middle
    of its middle paragraph."""
    whole = "\n\n".join(t.text for t in long_topics())
    chunks = _chunks(whole, embedder, settings).chunks
    if len(chunks) < UPDATE_CHUNKS:
        raise IndexerError(f"the long topics make fewer than {UPDATE_CHUNKS} chunks")
    # Cut after the paragraph holding the end of chunk UPDATE_CHUNKS, so the prefix
    # still makes at least that many chunks (each chunk of the prefix is the whole
    # text's up to there, and the text goes on past it).
    cut = whole.find("\n\n", chunks[UPDATE_CHUNKS - 1].end)
    text = whole if cut < 0 else whole[:cut]
    # Paragraphs of prose (not headings or code lines): the one nearest the middle.
    spans = [(m.start(), m.end()) for m in re.finditer(r"[^\n]+(?:\n[^\n]+)*", text)]
    prose = [s for s in spans if len(text[s[0] : s[1]].split()) >= PARAGRAPH_WORDS]
    if not prose:
        raise IndexerError(f"the long document has no paragraph of {PARAGRAPH_WORDS} words")
    middle = len(text) // 2
    start, end = min(prose, key=lambda s: abs((s[0] + s[1]) // 2 - middle))
    # The edit goes after the sentence end nearest the paragraph's middle (else its end).
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text[start:end])]
    at = start + min(ends, key=lambda e: abs(e - (end - start) // 2)) if ends else end
    after = text[:at] + EDIT + text[at:]
    return Edit(text, after, start, end + len(EDIT))


def _insert(conn: db.Connection, topics: list[Topic]) -> None:
    conn.execute(
        "INSERT INTO documents (content, metadata)"
        " SELECT c, jsonb_build_object('topic', n) FROM unnest(%s::text[], %s::text[]) AS u(c, n)",
        ([t.text for t in topics], [t.name for t in topics]),
    )


def drain_documents(
    ctx: Context,
    schema: str,
    conn: db.Connection,
    documents: int,
    embedder: TextEmbedder | None = None,
) -> float:
    """Seconds one Worker takes to index the queued documents (``--once``), with the
    vector cache on whatever the settings say (re-imports and edits are what it is
    for); the events start empty.  Raises unless ``documents`` documents end up
    indexed, none left."""
    from indexer.app import DAEMON_CONNECTIONS
    from indexer.store import Store
    from indexer.worker import Worker

    conn.execute("TRUNCATE events")
    settings = dataclasses.replace(ctx.settings, schema=schema, cache=True)
    with Store(ctx.dsn, schema, pool_size=DAEMON_CONNECTIONS) as store:
        store.queue_status()  # connect and check the schema before the clock starts
        worker = Worker(settings, store, embedder or ctx.embedder)
        seconds = timed(lambda: worker.run(once=True))
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE state = 'indexed') AS indexed,"
        " count(*) FILTER (WHERE state <> 'indexed') AS other FROM source_documents"
    ).fetchone()
    assert row is not None
    if row["indexed"] != documents or row["other"]:
        raise IndexerError(
            f"the worker indexed {row['indexed']} of {documents} documents "
            f"({row['other']} not indexed)"
        )
    return seconds


def _reused(conn: db.Connection) -> int:
    return int(
        one(
            conn,
            "SELECT coalesce(sum(reused_count), 0) FROM events WHERE kind = 'batch_completed'",
        )
    )


def _stored_chunks(conn: db.Connection) -> list[str]:
    """The chunks' texts in the documents' insertion order (a built-in document's key
    is its id), each document's in position order."""
    rows = conn.execute(
        "SELECT content FROM chunks WHERE document_id IS NOT NULL"
        " ORDER BY doc_key::bigint, position"
    ).fetchall()
    return [r["content"] for r in rows]


def bench_documents(ctx: Context, results: dict[str, Any]) -> None:
    topics = document_corpus(ctx.plan.documents)
    texts = chunk_texts(topics, ctx.embedder, ctx.settings)
    distinct = list(dict.fromkeys(texts))
    batch = ctx.settings.batch_size
    runs: dict[str, list[float]] = {"first": [], "raw": [], "again": []}
    stages: list[dict[str, float]] = []
    reused: list[int] = []
    say(f"documents: {len(topics)} documents, {len(texts)} chunks")
    with scratch_schema(ctx, "documents") as (schema, conn), quiet("indexer.worker"):

        def first_import() -> None:
            # Into an empty store, as a first import is: the last run's chunks are
            # deleted (a drain applies the deletes) and vacuumed away before the clock
            # starts, not deleted by the measured drain, nor left in the HNSW index.
            conn.execute("DELETE FROM documents")
            drain_documents(ctx, schema, conn, 0)
            conn.execute("VACUUM chunks")
            conn.execute("TRUNCATE vector_cache")
            _insert(conn, topics)
            runs["first"].append(drain_documents(ctx, schema, conn, len(topics)))
            stages.append(stage_split(conn))
            if _stored_chunks(conn) != texts:
                raise IndexerError("the daemon's chunks are not the texts the raw model ran on")

        def raw() -> None:
            # The daemon embeds each text once, in document order, batch_size at a time.
            def embed_all() -> None:
                for start in range(0, len(distinct), batch):
                    ctx.embedder.embed(distinct[start : start + batch])

            runs["raw"].append(timed(embed_all))

        # Unmeasured: the first model calls of a process pay for allocations that later
        # ones reuse, and whichever run went first would carry that.
        ctx.embedder.embed(distinct[:batch])
        steps = [raw, first_import]
        for repeat in range(ctx.plan.repeats):
            for step in steps if repeat % 2 == 0 else reversed(steps):
                step()
            # Re-import beside the first import just made: every chunk is cached.
            conn.execute("DELETE FROM documents")
            _insert(conn, topics)
            runs["again"].append(drain_documents(ctx, schema, conn, len(topics)))
            reused.append(_reused(conn))
            say(f"documents: run {repeat + 1}/{ctx.plan.repeats} done")
        update = _paragraph_update(ctx, schema, conn)
    results["documents"] = _figures(ctx, topics, texts, distinct, runs, stages, reused, update)


def _paragraph_update(ctx: Context, schema: str, conn: db.Connection) -> dict[str, Any]:
    """Index one long document, edit its middle paragraph, count the model's inputs."""
    from indexer.embedding.wrappers import CountingEmbedder

    edit = long_document(ctx.embedder, ctx.settings)
    conn.execute("DELETE FROM documents")
    conn.execute("TRUNCATE vector_cache")  # only this document's own vectors to reuse
    row = conn.execute(
        "INSERT INTO documents (content) VALUES (%s) RETURNING id", (edit.before,)
    ).fetchone()
    assert row is not None
    drain_documents(ctx, schema, conn, 1)
    before = len(_chunks(edit.before, ctx.embedder, ctx.settings))
    conn.execute("UPDATE documents SET content = %s WHERE id = %s", (edit.after, row["id"]))
    counting = CountingEmbedder(ctx.embedder)
    drain_documents(ctx, schema, conn, 1, counting)
    chunks = _chunks(edit.after, ctx.embedder, ctx.settings).chunks
    if _stored_chunks(conn) != [c.text for c in chunks]:
        raise IndexerError("the updated document's chunks are not its new text's")
    touched = [c.position for c in chunks if c.start < edit.end and c.end > edit.start]
    allowed = min(len(chunks), len(touched) + 2)
    inputs = len(counting.texts)
    # Model inputs that are not windows over the changed paragraph or beside one.
    near = {p for t in touched for p in (t - 1, t, t + 1)}
    near_texts = {c.text for c in chunks if c.position in near}
    return {
        "chunks_before": before,
        "chunks": len(chunks),
        "paragraph_chars": edit.end - edit.start,
        "paragraph_chunks": len(touched),
        "allowed_inputs": allowed,
        "model_inputs": inputs,
        "inputs_away_from_paragraph": sum(t not in near_texts for t in counting.texts),
        "inputs_over_allowed": round(inputs / allowed, 3),
        "reused": _reused(conn),
    }


def _figures(
    ctx: Context,
    topics: list[Topic],
    texts: list[str],
    distinct: list[str],
    runs: dict[str, list[float]],
    stages: list[dict[str, float]],
    reused: list[int],
    update: dict[str, Any],
) -> dict[str, Any]:
    first, raw, again = runs["first"], runs["raw"], runs["again"]
    middle = sorted(range(len(first)), key=lambda i: first[i])[len(first) // 2]
    stage = stages[middle]
    rows = len(texts)
    return {
        "documents": len(topics),
        "characters": sum(len(t.text) for t in topics),
        "chunks": rows,
        "distinct_chunks": len(distinct),
        "chunk_tokens": ctx.settings.chunk_tokens,
        "chunk_overlap": ctx.settings.chunk_overlap,
        "batch_size": ctx.settings.batch_size,
        "document_claim_size": ctx.settings.document_claim_size,
        "first_import_rows_per_s": round(rows / median(first), 1),
        "raw_texts_per_s": round(len(distinct) / median(raw), 1),
        # Seconds over seconds, run by run: the raw model's over the daemon's beside it.
        "ratio_to_raw": round(paired_ratio(raw, first), 3),
        "outside_model_share": round(1 - stage["embed"] / (first[middle] * 1000), 4),
        "median_run": {
            "batches": int(stage["batches"]),
            "wall_ms": round(first[middle] * 1000, 1),
            "claim_ms": round(stage["claim"], 1),
            "embed_ms": round(stage["embed"], 1),
            "write_ms": round(stage["write"], 1),
        },
        "reimport_rows_per_s": round(rows / median(again), 1),
        "reimport_speedup": round(paired_ratio(first, again), 2),
        "reimport_reused": min(reused),
        "runs_s": {k: [round(v, 3) for v in vs] for k, vs in runs.items()},
        "update": update,
    }
