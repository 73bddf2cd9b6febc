"""The commands that run the model: ``embed`` (JSON lines in, vectors out) and
``search`` (rows, or with ``--documents`` documents), with the one-line explanation a
search that finds nothing prints on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from indexer.app import EmbedderLoader, Indexer
from indexer.cli.inputs import json_lines, json_object
from indexer.cli.output import snippet, visible
from indexer.exceptions import InvalidInput
from indexer.limits import check_k, check_passages
from indexer.settings import Settings

EMBED_CHUNK = 256  # JSON lines embedded per model call in `indexer embed`


def cmd_embed(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    # The model loads before stdin is read, so a missing model fails at once; the
    # database is never touched.
    indexer = Indexer(settings, embedder=load(settings))
    for records in json_lines(sys.stdin, EMBED_CHUNK):
        vectors = indexer.embed([r["text"] for r in records])
        for record, vector in zip(records, vectors, strict=True):
            record["embedding"] = [round(float(x), 7) for x in vector]
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    check_k(args.k, "-k")
    metadata_filter = json_object(args.filter, "--filter") if args.filter else None
    if args.documents:
        return _search_documents(args, settings, load, metadata_filter)
    for option, value in (("--source", args.source), ("--passages", args.passages)):
        if value is not None:
            raise InvalidInput(f"{option} goes with --documents")
    with Indexer(settings, embedder=load(settings)) as ix:
        hits = ix.search(args.text, args.k, filter=metadata_filter, model=args.model)
        empty = None if hits or args.json else _no_rows(ix.store.search_coverage(), args.filter)
    for hit in hits:
        if args.json:
            record = {
                "id": hit.id,
                "score": round(hit.score, 6),
                "content": hit.content,
                "metadata": hit.metadata,
            }
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"{hit.id:>8}  {hit.score:.4f}  {snippet(hit.content, 100)}")
    if empty is not None:
        print(empty, file=sys.stderr)
    return 0


def _no_rows(coverage: dict[str, Any], metadata_filter: str | None) -> str:
    """What a row search that found nothing means."""
    if coverage["rows_embedded"]:
        if metadata_filter:
            return f"no embedded row matches the filter {visible(metadata_filter)}"
        return "no row found"
    if coverage["rows_waiting"]:
        return "no embedded rows yet: rows are waiting (is `indexer run` running?)"
    return "no embedded rows yet"


def _no_documents(coverage: dict[str, Any], metadata_filter: str | None, source: str | None) -> str:
    """What a document search that found nothing means."""
    of = f" of source {visible(source)}" if source else ""
    if coverage["passages"]:
        if metadata_filter:
            return f"no passage{of} matches the filter {visible(metadata_filter)}"
        return "no document found"
    if coverage["documents_indexed"]:
        return f"no indexed document{of} is one this role may read"
    none = f"source {visible(source)} has no indexed documents" if source else "nothing is indexed"
    if coverage["documents_indexed"] is None:  # this role may not see the queue
        return f"{none} that this role may read"
    if coverage["documents_waiting"]:
        return f"{none} yet: documents are waiting (is `indexer run` running?)"
    if coverage["documents_failed"]:
        return (
            f"{none}: {'its' if source else 'the'} documents failed (`indexer status` shows "
            "why, `indexer retry --failed` re-queues them)"
        )
    if source:
        return f"{none}: it has no document to index (its table is empty)"
    return f"{none} yet: no source has a document to index"


def _search_documents(
    args: argparse.Namespace,
    settings: Settings,
    load: EmbedderLoader,
    metadata_filter: dict[str, Any] | None,
) -> int:
    passages = check_passages(3 if args.passages is None else args.passages, "--passages")
    with Indexer(settings, embedder=load(settings)) as ix:
        hits = ix.search_documents(
            args.text,
            args.k,
            filter=metadata_filter,
            source=args.source,
            passages=passages,
            model=args.model,
        )
        empty = (
            None
            if hits or args.json
            else _no_documents(ix.store.search_coverage(args.source), args.filter, args.source)
        )
    for hit in hits:
        if args.json:
            record = {
                "source": hit.source,
                "key": hit.key,
                "score": round(hit.score, 6),
                "content": hit.content,
                "position": hit.position,
                "char_start": hit.char_start,
                "char_end": hit.char_end,
                "metadata": hit.metadata,
                "passages": hit.passages,
            }
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(
                f"{hit.score:.4f}  {visible(hit.source)}  {visible(hit.key)}  "
                f"{snippet(hit.content, 80)}  "
                f"[{hit.char_start}:{hit.char_end}]"
            )
    if empty is not None:
        print(empty, file=sys.stderr)
    return 0
