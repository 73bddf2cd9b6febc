"""Print README's sample outputs of ``POST /embed`` and ``POST /search`` from a real run.

    DATABASE_URL=postgresql://.../scratch .venv/bin/python benchmarks/readme_examples.py

Against an empty, migrated database (``indexer migrate``; the script refuses a table that
already has rows): it inserts the three rows of README's five-minute tour, embeds them
with a real ``indexer run --once`` (the daemon's own wiring, in this process), starts the
real HTTP API on a free loopback port and sends README's requests.  Each answer is printed
as README shows it, one line each: vectors cut to their first two numbers (``...``; the
others ``[...]``) and scores rounded to 4 decimals; nothing else is changed.
``tests/acceptance/test_readme_samples.py`` checks that README shows what this prints.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any

from indexer.app import Daemon, Indexer
from indexer.db.connect import resolve_dsn
from indexer.embedding import TextEmbedder, load_embedder
from indexer.exceptions import IndexerError
from indexer.http import HttpServer, create_app
from indexer.settings import Settings

#: The rows of README's five-minute tour, in its order (ids 1, 2, 3 in a fresh table).
TOUR_ROWS = [
    ("PostgreSQL is an open source relational database.", {"topic": "db"}),
    ("Cats sleep up to sixteen hours a day.", {"topic": "pets"}),
    ("The stock market fell sharply today.", {"topic": "news"}),
]

#: README's requests: (path, body).
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/embed", {"texts": ["PostgreSQL is a database", "Cats sleep a lot"]}),
    (
        "/embed",
        {
            "batch_id": "b-17",
            "chunks": [
                {"chunk_id": 1, "content": "first"},
                {"chunk_id": "x-2", "content": "second"},
            ],
        },
    ),
    ("/search", {"query": "which database supports SQL?", "k": 3, "filter": {"topic": "db"}}),
]

_CUT = "__cut__"


def shorten(path: str, answer: dict[str, Any]) -> str:
    """``answer`` as README prints it (see the module's docstring)."""
    cuts: list[str] = []

    def cut(vector: list[float], keep: int) -> str:
        cuts.append("[" + ", ".join([*(repr(x) for x in vector[:keep]), "..."]) + "]")
        return _CUT

    if path == "/search":
        for hit in answer["results"]:
            hit["score"] = round(hit["score"], 4)
    elif "embeddings" in answer:
        vectors = answer["embeddings"]
        answer["embeddings"] = [cut(vectors[0], 2), *(cut([], 0) for _ in vectors[1:])]
    else:
        for chunk in answer["chunks"]:
            chunk["embedding"] = cut([], 0)
    text = json.dumps(answer, ensure_ascii=False)
    for replacement in cuts:
        text = text.replace(json.dumps(_CUT), replacement, 1)
    return text


def samples(settings: Settings, embedder: TextEmbedder) -> list[str]:
    """README's sample answers, from the database in ``settings`` (empty and migrated)."""
    with Indexer(settings, embedder=embedder) as ix:
        if int(ix.status()["embedded"]) or int(ix.status()["backlog"]):
            raise IndexerError(
                "the chunks table already has rows: run this against an empty, migrated "
                "database (ids 1-3 must be the tour's rows)"
            )
        ix.add([text for text, _ in TOUR_ROWS], [meta for _, meta in TOUR_ROWS])
    Daemon(settings, once=True, load=lambda _: embedder).run()
    api = HttpServer(
        create_app(settings, dsn=resolve_dsn(settings), embedder=embedder), "127.0.0.1", 0
    )
    api.start()
    try:
        lines = []
        for path, body in REQUESTS:
            request = urllib.request.Request(
                api.url + path,
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                lines.append(shorten(path, json.load(response)))
        return lines
    finally:
        api.stop()


def main() -> int:
    try:
        settings = Settings.from_env()
        for line in samples(settings, load_embedder(settings)):
            print(line)
    except IndexerError as exc:
        print(f"readme_examples: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
