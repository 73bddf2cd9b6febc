"""The commands that put text in: ``sources add/list/remove`` (your own tables) and
``documents add`` (the built-in documents table).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from indexer.app import EmbedderLoader, Indexer
from indexer.cli.inputs import json_lines, json_object
from indexer.cli.output import jsonable, plural, source_line, visible
from indexer.exceptions import InvalidInput
from indexer.settings import Settings

DOCUMENTS_CHUNK = 256  # JSON lines inserted per statement in `indexer documents add`


def cmd_sources(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    with Indexer(settings) as ix:
        if args.action == "add":
            metadata = [c.strip() for part in args.metadata for c in part.split(",")]
            if any(not c for c in metadata):
                raise InvalidInput("--metadata: give column names separated by commas, e.g. a,b")
            source = ix.add_source(
                args.table,
                key=args.key,
                text=args.text,
                metadata=metadata,
                metadata_json=args.metadata_json,
                name=args.name,
            )
            print(_added_source(source))
        elif args.action == "list":
            for row in ix.sources():
                if args.json:
                    print(json.dumps({k: jsonable(v) for k, v in row.items()}))
                else:
                    print(source_line(row))
        elif args.action == "recut":
            queued = ix.store.recut_documents(settings.chunk_tokens, settings.chunk_overlap)
            print(
                f"documents are now cut into passages of {settings.chunk_tokens} tokens, "
                f"{settings.chunk_overlap} overlapping: {plural(queued, 'document')} queued "
                "again (each keeps its passages until its new ones replace them)"
            )
        else:
            removed = ix.remove_source(args.name)
            print(
                f"removed source {visible(args.name)} and {plural(removed, 'chunk')} "
                "of its documents"
            )
    return 0


def _added_source(source: dict[str, Any]) -> str:
    texts = visible(", ".join(source["text_columns"]))
    estimate = source.get("estimated_rows")
    rows = f"the {plural(estimate, 'row')} (estimated)" if estimate else "the rows"
    key = f"{source['key_column']} ({source['key_type']})"
    return (
        f"added source {visible(source['name'])}: key {visible(key)}, "
        f"text {texts}; the daemon back-fills {rows} already there"
    )


def cmd_documents(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    if args.text:
        metadata = json_object(args.metadata, "--metadata") if args.metadata else {}
        batches: Iterator[list[dict[str, Any]]] = iter(
            [[{"text": t, "metadata": metadata} for t in args.text]]
        )
    elif args.metadata:
        raise InvalidInput('--metadata goes with --text (on stdin, each line has "metadata")')
    else:
        batches = json_lines(sys.stdin, DOCUMENTS_CHUNK)
    added = 0
    with Indexer(settings) as ix:
        for records in batches:
            for number, record in enumerate(records, start=added + 1):
                if not isinstance(record.get("metadata", {}), dict):
                    raise InvalidInput(f'document {number}: "metadata" must be a JSON object')
            ids = ix.add_documents(
                [r["text"] for r in records], [r.get("metadata", {}) for r in records]
            )
            added += len(ids)
            for doc_id in ids:
                print(doc_id)
            sys.stdout.flush()
    print(f"added {plural(added, 'document')}", file=sys.stderr)
    return 0
