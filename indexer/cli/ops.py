"""The commands that inspect and maintain a running installation: ``status``,
``retry``, ``events prune`` and ``cache stats/prune/purge``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from indexer.app import EmbedderLoader, Indexer
from indexer.cli.output import jsonable, model_line, plural, source_line, visible
from indexer.exceptions import InvalidInput
from indexer.settings import Settings
from indexer.store import CacheStats

#: `indexer status`: the rows inserted into chunks, then the sources' documents and
#: their passages (counted apart: a passage is no row of yours).
STATUS_FIELDS = (
    "backlog",
    "pending",
    "in_flight",
    "embedded",
    "failed",
    "rows_per_second",
    "eta",
    "oldest_pending_age",
    "active_workers",
    "cache_hit_rate",
    "documents",
    "documents_pending",
    "documents_in_flight",
    "documents_indexed",
    "documents_failed",
    "passages",
    "passages_per_second",
)
FAILED_SHOWN = 10


def cmd_status(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    with Indexer(settings) as ix:
        status = ix.status()
        failed = ix.failed_rows(FAILED_SHOWN) if status["failed"] else []
        failed_documents = (
            ix.failed_documents(FAILED_SHOWN) if status.get("documents_failed") else []
        )
        sources = ix.sources()
        models = ix.models()
    if args.json:
        out = {k: jsonable(v) for k, v in status.items()}
        out["failed_rows"] = [{k: jsonable(v) for k, v in r.items()} for r in failed]
        out["failed_documents"] = [{k: jsonable(v) for k, v in r.items()} for r in failed_documents]
        out["sources"] = [{k: jsonable(v) for k, v in r.items()} for r in sources]
        out["models"] = [{k: jsonable(v) for k, v in r.items()} for r in models]
        print(json.dumps(out))
        return 0
    for key in STATUS_FIELDS:
        value = status[key]
        print(f"{key.replace('_', ' '):<20}{'-' if value is None else value}")
    for row in failed:
        error = visible(str(row["last_error"]))
        print(f"failed row {row['id']} after {row['attempts']} attempts: {error}")
    if len(failed) == FAILED_SHOWN:
        print(f"(first {FAILED_SHOWN} failed rows; `indexer retry --failed` re-queues them)")
    for doc in failed_documents:
        print(
            f"failed document {visible(doc['source'])} {visible(doc['key'])} after "
            f"{doc['attempts']} attempts: {visible(str(doc['last_error']))}"
        )
    if len(failed_documents) == FAILED_SHOWN:
        print(
            f"(first {FAILED_SHOWN} failed documents; `indexer retry --failed`, or "
            "`--source NAME`, re-queues them)"
        )
    for row in sources:
        print(f"{'source':<20}{source_line(row)}")
    for row in models:
        print(f"{'model':<20}{model_line(row)}")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    """--failed: every failed row and document; --id and --source choose (and win)."""
    if not (args.failed or args.ids or args.source):
        raise InvalidInput(
            "say what to re-queue: --failed (every failed row and document), --id N (a "
            "failed row) or --source NAME (a source's failed documents)"
        )
    chosen = bool(args.ids or args.source)
    done = []
    with Indexer(settings) as ix:
        if args.ids or not chosen:
            done.append(f"{len(ix.retry_failed(args.ids))} failed rows")
        if args.source or not chosen:
            per_source = ix.retry_failed_documents(args.source)
            documents = plural(sum(per_source.values()), "failed document")
            if per_source:
                shown = ", ".join(f"{visible(s)} {n}" for s, n in per_source.items())
                documents += f" ({shown})"
            done.append(documents)
    print(f"re-queued {' and '.join(done)}")
    return 0


def cmd_events(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    with Indexer(settings) as ix:
        pruned = ix.prune_events()
    print(f"pruned {plural(pruned, 'event')} older than {settings.events_retention_days:g} days")
    return 0


def cmd_cache(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    with Indexer(settings) as ix:
        if args.action == "stats":
            _print_cache_stats(ix.cache_stats(), args.json)
        elif args.action == "prune":
            pruned = ix.prune_cache()
            print(
                f"pruned {plural(pruned, 'cached vector')} (unused for "
                f"{settings.cache_max_age_days:g} days, or beyond "
                f"{settings.cache_max_entries} entries)"
            )
        elif args.all:
            if args.text or args.ids or args.hashes:
                raise InvalidInput("--all deletes everything: give it alone")
            ix.clear_cache()
            print("deleted every cached vector")
        else:
            if not (args.text or args.ids or args.hashes):
                raise InvalidInput("say what to purge: --text, --id, --hash, or --all")
            purged = ix.purge_cache(
                texts=args.text, ids=args.ids, hashes=[_sha256(h) for h in args.hashes]
            )
            print(f"purged {plural(purged, 'cached vector')}")
    return 0


def _sha256(text: str) -> bytes:
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise InvalidInput(f"--hash {text!r} is not a sha256 in hex (64 hex digits)")
    return digest


def _print_cache_stats(stats: CacheStats, as_json: bool) -> None:
    fields: dict[str, Any] = {
        "entries": stats.entries,
        "bytes": stats.bytes,
        "hit_rate": stats.hit_rate,
        "hit_rate_last_hour": stats.hit_rate_last_hour,
        "rows_written": stats.rows_written,
        "rows_reused": stats.rows_reused,
        "since": stats.since,
        "least_recently_used": stats.least_recently_used,
    }
    if as_json:
        out = {k: jsonable(v) for k, v in fields.items()}
        out["models"] = stats.models
        print(json.dumps(out))
        return
    fields["bytes"] = f"{stats.bytes / 2**20:.1f} MiB"
    for key in ("hit_rate", "hit_rate_last_hour"):
        rate = fields[key]
        fields[key] = None if rate is None else f"{rate:.1%}"
    for key, value in fields.items():
        print(f"{key.replace('_', ' '):<20}{'-' if value is None else value}")
    for model, count in sorted(stats.models.items()):
        print(f"{'model':<20}{visible(model)}: {count}")
