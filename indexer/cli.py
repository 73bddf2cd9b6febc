"""The `indexer` command: parse the arguments, call the application, print the result.

Every setting is an option of every subcommand and also an ``INDEXER_*`` environment
variable (``--help`` names it); the option wins.  Errors the user can act on print
one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING
from typing import Any, TextIO

import psycopg

from indexer import logs
from indexer.app import Daemon, EmbedderLoader, Indexer
from indexer.db import migrate, server
from indexer.db.connect import connect, redact, resolve_dsn
from indexer.embedding import load_embedder
from indexer.exceptions import ConfigurationError, IndexerError, InvalidInput, first_line
from indexer.limits import check_k, check_passages
from indexer.settings import FIELDS, Settings, env_name, unknown_variables, value_parser
from indexer.store import CacheStats

#: What a terminal would act on rather than show, or that would reorder what it shows:
#: C0 and C1 controls and DEL (ESC, CR, NEL...), the line and paragraph separators, the
#: bidirectional marks, embeddings, overrides and isolates; and lone surrogates, which
#: cannot even be written out as UTF-8.
_UNSHOWN = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """``text`` for a line of plain-text output: each character a terminal would act on
    (see ``_UNSHOWN``) written as an escape instead (``\\n``, ``\\x1b``, ``\\u202e``), so
    that a key, a name or an error from the database is always shown on the one line it
    is printed on and cannot move the cursor, recolour or reorder the text.  Every
    plain-text line that holds user-supplied text goes through it (``--json`` does not:
    its strings are JSON-escaped)."""
    return _UNSHOWN.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


logger = logging.getLogger("indexer")

EMBED_CHUNK = 256  # JSON lines embedded per model call in `indexer embed`
DOCUMENTS_CHUNK = 256  # JSON lines inserted per statement in `indexer documents add`

Command = Callable[[argparse.Namespace, Settings, EmbedderLoader], int]


# The settings each command reads: its --help lists these and no others.
_DATABASE = ("database_url", "data_dir", "schema")
_MODEL = (
    "model_dir",
    "model_variant",
    "model_cache",
    "threads",
    "provider",
    "token_budget",
    "max_chars",
)
_LOGS = ("log_level", "log_format")
_ALL = tuple(f.name for f in FIELDS)
USES: dict[str, tuple[str, ...]] = {
    "migrate": (*_DATABASE, *_LOGS),
    "run": _ALL,
    "dsn": (*_DATABASE, *_LOGS),
    "embed": (*_MODEL, *_LOGS),
    "search": (*_DATABASE, *_MODEL, *_LOGS),
    "status": (*_DATABASE, *_LOGS),
    "retry": (*_DATABASE, *_LOGS),
    "events": (*_DATABASE, "events_retention_days", *_LOGS),
    "cache": (*_DATABASE, "max_chars", "cache_max_entries", "cache_max_age_days", *_LOGS),
    "sources": (*_DATABASE, *_LOGS),
    "documents": (*_DATABASE, *_LOGS),
    "server": ("data_dir", *_LOGS),
    "bench": _ALL,
}


def _settings_parser(names: Sequence[str]) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each also an environment variable)")
    for f in FIELDS:
        if f.name not in names:
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_option_type(f),
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (env {env_name(f.name)}; default: {_shown(default)})",
        )
    return parent


def _option_type(f: Any) -> Callable[[str], Any]:
    parse = value_parser(f)
    if str(f.type) != "bool":
        return parse  # argparse's own message: "invalid int value: 'x'"

    def on_off(raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return on_off


def _shown(default: object) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def build_parser() -> argparse.ArgumentParser:
    settings_of = {name: _settings_parser(names) for name, names in USES.items()}
    parser = argparse.ArgumentParser(
        prog="indexer",
        description="Embed text rows in PostgreSQL and search them.",
    )
    parser.add_argument("--version", action="version", version=f"indexer {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[settings_of[name]], help=help_text, description=help_text
        )

    add("migrate", "create or upgrade the schema (chunks, events, indexes, views)")
    run = add("run", "run the embedding daemon")
    run.add_argument("--once", action="store_true", help="drain the backlog, then exit")
    run.add_argument("--no-progress", action="store_true", help="no progress bar with --once")
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="serve the HTTP API (health, metrics, embed, search) on this address, "
        "e.g. 127.0.0.1:8080 (env INDEXER_HTTP; default: off)",
    )
    dsn = add("dsn", "print the connection string (starting the embedded PostgreSQL if needed)")
    dsn.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also say on stderr which database it is: data directory (and whether it was "
        "just created), server PID, schema revision",
    )
    add("embed", 'embed JSON lines from stdin ({"text": ...}) to stdout, adding "embedding"')
    search = add("search", "print the rows (or, with --documents, the documents) nearest to a text")
    search.add_argument("text", help="the text to find rows like")
    search.add_argument("-k", type=int, default=5, help="how many rows (default 5)")
    search.add_argument(
        "--filter",
        metavar="JSON",
        help='only rows whose metadata contains this JSON object, e.g. \'{"lang": "en"}\'',
    )
    search.add_argument("--json", action="store_true", help="one JSON object per line")
    search.add_argument(
        "--documents",
        action="store_true",
        help="the k nearest documents of the sources, each scored by its best passage",
    )
    search.add_argument(
        "--source", metavar="NAME", help="with --documents: only this source's documents"
    )
    search.add_argument(
        "--passages",
        type=int,
        default=None,
        metavar="N",
        help="with --documents: the best passages each document carries in --json (default 3)",
    )
    status = add(
        "status",
        "rows: backlog, in flight, embedded, failed, rate and ETA; documents and passages; "
        "failed rows and documents with their errors; per source",
    )
    status.add_argument("--json", action="store_true", help="one JSON object, durations in s")
    retry = add(
        "retry",
        "re-queue what is parked as failed: every row and document (--failed), rows by "
        "--id, or one source's documents (--source)",
    )
    retry.add_argument("--failed", action="store_true", help="every failed row and document")
    retry.add_argument("--id", type=int, action="append", dest="ids", help="this failed row")
    retry.add_argument(
        "--source", metavar="NAME", help="the failed documents of this source (`sources list`)"
    )
    cache_help = "inspect and maintain the vector cache"
    cache = sub.add_parser("cache", help=cache_help, description=cache_help)
    cache_actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = settings_of["cache"]
    cache_actions.add_parser(
        "stats", help="entries, disk size, hit rate", parents=[common]
    ).add_argument("--json", action="store_true", help="print one JSON object")
    cache_actions.add_parser(
        "prune",
        help="delete vectors unused for INDEXER_CACHE_MAX_AGE_DAYS or beyond "
        "INDEXER_CACHE_MAX_ENTRIES (the daemon also does this hourly)",
        parents=[common],
    )
    purge = cache_actions.add_parser(
        "purge",
        help="delete the cached vectors of given texts, rows or hashes (every model)",
        parents=[common],
    )
    purge.add_argument("--text", action="append", default=[], help="this text (repeatable)")
    purge.add_argument(
        "--id", type=int, action="append", dest="ids", default=[], help="this row's text"
    )
    purge.add_argument(
        "--hash", action="append", dest="hashes", default=[], help="this sha256, in hex"
    )
    purge.add_argument("--all", action="store_true", help="every cached vector")
    sources_help = "register your own tables as sources, list them, remove them"
    sources = sub.add_parser("sources", help=sources_help, description=sources_help)
    source_actions = sources.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = settings_of["sources"]
    source_add = source_actions.add_parser(
        "add",
        help="register a table: its triggers queue every change, the daemon back-fills "
        "the rows already there",
        parents=[common],
    )
    source_add.add_argument("table", metavar="TABLE", help="the table, e.g. notes or app.notes")
    source_add.add_argument(
        "--id",
        dest="key",
        metavar="COL",
        help="the document key: a unique NOT NULL column (default: the primary key)",
    )
    source_add.add_argument(
        "--text",
        action="append",
        required=True,
        metavar="COL",
        help="a text column (repeatable; joined by a blank line in this order)",
    )
    source_add.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="A,B",
        help="columns copied into each chunk's metadata (comma-separated, repeatable)",
    )
    source_add.add_argument(
        "--metadata-json",
        metavar="COL",
        help="a jsonb column whose object is merged into each chunk's metadata",
    )
    source_add.add_argument(
        "--name", help="the source's name (default: the table's schema-qualified name)"
    )
    source_actions.add_parser(
        "list",
        help="per source: documents indexed, pending, in flight, failed; chunks; lag; back-fill",
        parents=[common],
    ).add_argument("--json", action="store_true", help="one JSON object per line")
    source_actions.add_parser(
        "remove",
        help="unregister a source: drop its triggers, delete its documents' chunks "
        "(the table and its rows stay)",
        parents=[common],
    ).add_argument("name", metavar="NAME", help="the source's name (`indexer sources list`)")
    documents_help = "add documents of any length to the built-in documents table"
    documents = sub.add_parser("documents", help=documents_help, description=documents_help)
    document_actions = documents.add_subparsers(dest="action", required=True, metavar="ACTION")
    documents_add = document_actions.add_parser(
        "add",
        help='insert documents: JSON lines on stdin ({"text": ..., "metadata": {...}}), or '
        "the --text values; print their ids (the daemon chunks and embeds them)",
        parents=[settings_of["documents"]],
    )
    documents_add.add_argument(
        "--text",
        action="append",
        default=[],
        help="a document's text instead of stdin (repeatable: one document each)",
    )
    documents_add.add_argument(
        "--metadata",
        metavar="JSON",
        help="with --text: the metadata (a JSON object) of every document given",
    )
    events = add("events", "maintain the events table")
    events.add_argument("action", choices=["prune"], help="prune: delete events past retention")
    from indexer import bench  # light at import; heavy parts load when it runs

    bench.add_arguments(
        add("bench", "measure model, backfill, latency, search, memory and claim cost")
    )
    server_cmd = add("server", "start or stop the embedded PostgreSQL")
    server_cmd.add_argument("action", choices=["start", "stop"])
    return parser


def main(argv: Sequence[str] | None = None, *, load: EmbedderLoader = load_embedder) -> int:
    """Run the command line ``argv``; ``load`` builds the embedder from the settings
    (tests pass a wrapper that injects failures, see :mod:`indexer.testing`)."""
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        logs.configure(settings.log_level, settings.log_format)
        for line in unknown_variables():
            logger.warning("%s", line)
        return COMMANDS[args.command](args, settings, load)
    except IndexerError as exc:
        print(f"indexer: error: {visible(str(exc))}", file=sys.stderr)
        return 1
    except psycopg.errors.InsufficientPrivilege as exc:
        # Every command says what to grant where it knows; this is the net for the rest.
        print(
            f"indexer: error: {visible(first_line(exc))}: the role this command connects "
            "as lacks that privilege; ask the owner of the indexer's tables, or an "
            "administrator, to grant it (README: Security)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("indexer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    before, after = migrate.upgrade(resolve_dsn(settings), settings.schema)
    if before == after:
        print(f"schema {settings.schema!r} is already at revision {after}")
    else:
        print(f"schema {settings.schema!r} upgraded from {before or 'nothing'} to {after}")
    return 0


def cmd_dsn(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    # stdout is the DSN alone (scripts use `$(indexer dsn)`); anything else goes to stderr.
    info = server.start_server(settings.data_dir) if settings.uses_embedded_server else None
    dsn = info.dsn if info is not None else resolve_dsn(settings)
    print(dsn, flush=True)
    if args.verbose:
        for key, value in _dsn_details(dsn, settings, info):
            print(f"{key:<16}{visible(value)}", file=sys.stderr)
    return 0


def _dsn_details(
    dsn: str, settings: Settings, info: server.ServerInfo | None
) -> list[tuple[str, str]]:
    if info is None:
        details = [("database", f"{redact(dsn)} (DATABASE_URL; no embedded server)")]
    else:
        state = "new: created by this command" if info.created else "existing"
        details = [
            ("database", f"{server.DATABASE!r} of the embedded PostgreSQL"),
            ("data directory", f"{info.data_dir} ({state})"),
            ("server pid", str(info.pid)),
        ]
    try:
        with connect(dsn, settings.schema, autocommit=True, vector=False) as conn:
            current = migrate.current_revision(conn, settings.schema)
    except IndexerError as exc:
        return [*details, ("schema", f"{settings.schema!r}: cannot check ({exc})")]
    head = migrate.head_revision()
    if current is None:
        schema = f"{settings.schema!r} has no indexer tables yet: run `indexer migrate`"
    elif current == head:
        schema = f"{settings.schema!r} migrated (revision {current}, up to date)"
    else:
        schema = f"{settings.schema!r} at revision {current}, needs {head}: run `indexer migrate`"
    return [*details, ("schema", schema)]


def cmd_server(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    if not settings.uses_embedded_server:
        raise InvalidInput("DATABASE_URL is set: there is no embedded server to manage")
    if args.action == "start":
        print(server.start(settings.data_dir))
    elif server.stop(settings.data_dir):
        print(f"stopped the embedded PostgreSQL in {settings.data_dir}")
    else:
        print(f"the embedded PostgreSQL in {settings.data_dir} was not running")
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of the environment and the options; an invalid value is named as the
    user gave it: ``--batch-size`` if typed as an option, ``INDEXER_BATCH_SIZE`` if set in
    the environment."""
    options = {f.name: getattr(args, f.name, None) for f in FIELDS}
    try:
        return Settings.from_env(**options)
    except ConfigurationError as exc:
        typed = {k: v for k, v in options.items() if v is not None}
        try:
            Settings.from_env({}, **typed)
        except ConfigurationError as from_options:
            message = str(from_options)
            for name in typed:
                message = message.replace(env_name(name), "--" + name.replace("_", "-"))
            raise ConfigurationError(message) from None
        raise exc from None


def cmd_run(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    address = None
    http = args.http or os.environ.get("INDEXER_HTTP") or None
    if http:  # a typo fails before the model loads; without --http, no web stack
        from indexer.http import parse_address

        address = parse_address(http, None if args.http else f"INDEXER_HTTP={http!r}")
    on_terminal = args.once and not args.no_progress and sys.stderr.isatty()
    Daemon(
        settings,
        once=args.once,
        http=address,
        progress=sys.stderr if on_terminal else None,
        load=load,
    ).run()
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    from indexer import bench

    return bench.main(args, settings)


def cmd_embed(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    # The model loads before stdin is read, so a missing model fails at once; the
    # database is never touched.
    indexer = Indexer(settings, embedder=load(settings))
    for records in _json_lines(sys.stdin, EMBED_CHUNK):
        vectors = indexer.embed([r["text"] for r in records])
        for record, vector in zip(records, vectors, strict=True):
            record["embedding"] = [round(float(x), 7) for x in vector]
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return 0


def _json_lines(stream: TextIO, size: int) -> Iterator[list[dict[str, Any]]]:
    """Records in chunks of ``size``; a bad line ends the stream after the good lines
    before it have been yielded, so their output is not lost."""
    chunk: list[dict[str, Any]] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            chunk.append(_parse_line(line, number))
        except InvalidInput:
            if chunk:
                yield chunk
            raise
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parse_line(line: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise InvalidInput(f"line {number}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InvalidInput(f'line {number}: expected an object with a string "text" field')
    return record


def cmd_search(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    check_k(args.k, "-k")
    metadata_filter = _json_object(args.filter, "--filter") if args.filter else None
    if args.documents:
        return _search_documents(args, settings, load, metadata_filter)
    for option, value in (("--source", args.source), ("--passages", args.passages)):
        if value is not None:
            raise InvalidInput(f"{option} goes with --documents")
    with Indexer(settings, embedder=load(settings)) as ix:
        hits = ix.search(args.text, args.k, filter=metadata_filter)
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
            print(f"{hit.id:>8}  {hit.score:.4f}  {_snippet(hit.content, 100)}")
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
            args.text, args.k, filter=metadata_filter, source=args.source, passages=passages
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
                f"{_snippet(hit.content, 80)}  "
                f"[{hit.char_start}:{hit.char_end}]"
            )
    if empty is not None:
        print(empty, file=sys.stderr)
    return 0


def _snippet(text: str, width: int) -> str:
    """``text`` on one line, its runs of whitespace (newlines included) made one space,
    cut to ``width`` characters (an ellipsis marks the cut), then :func:`visible`."""
    line = " ".join(text.split())
    return visible(line if len(line) <= width else line[: width - 1] + "…")


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
                    print(json.dumps({k: _jsonable(v) for k, v in row.items()}))
                else:
                    print(_source_line(row))
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


def _source_line(row: dict[str, Any]) -> str:
    """One source of ``indexer_source_status`` on one line."""
    lag = row["lag"]
    backfill = (
        "back-fill done"
        if row["backfilled"]
        else f"back-fill: {plural(row['backfilled_rows'], 'row')} so far"
    )
    gone = (
        ""
        if row.get("table_present", True)
        else f"; its table {visible(row['source_table'])} is gone: `indexer sources remove`"
    )
    return (
        f"{visible(row['source'])}: {row['indexed']} indexed, {row['pending']} pending, "
        f"{row['in_flight']} in flight, {row['failed']} failed, {row['truncated']} truncated; "
        f"{plural(row['chunks'], 'chunk')}; lag {_duration(lag)}; {backfill}{gone}"
    )


def _duration(value: Any) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_documents(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    if args.text:
        metadata = _json_object(args.metadata, "--metadata") if args.metadata else {}
        batches: Iterator[list[dict[str, Any]]] = iter(
            [[{"text": t, "metadata": metadata} for t in args.text]]
        )
    elif args.metadata:
        raise InvalidInput('--metadata goes with --text (on stdin, each line has "metadata")')
    else:
        batches = _json_lines(sys.stdin, DOCUMENTS_CHUNK)
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
    if args.json:
        out = {k: _jsonable(v) for k, v in status.items()}
        out["failed_rows"] = [{k: _jsonable(v) for k, v in r.items()} for r in failed]
        out["failed_documents"] = [
            {k: _jsonable(v) for k, v in r.items()} for r in failed_documents
        ]
        out["sources"] = [{k: _jsonable(v) for k, v in r.items()} for r in sources]
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
        print(f"{'source':<20}{_source_line(row)}")
    return 0


def _jsonable(value: Any) -> Any:
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return float(value)


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{option}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidInput(f'{option}: expected a JSON object such as {{"lang": "en"}}')
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("pg-indexer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


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


def plural(count: int, word: str) -> str:
    """``1 event``, ``2 events``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


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
        out = {k: _jsonable(v) for k, v in fields.items()}
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


COMMANDS: dict[str, Command] = {
    "migrate": cmd_migrate,
    "run": cmd_run,
    "dsn": cmd_dsn,
    "embed": cmd_embed,
    "search": cmd_search,
    "status": cmd_status,
    "retry": cmd_retry,
    "events": cmd_events,
    "cache": cmd_cache,
    "sources": cmd_sources,
    "documents": cmd_documents,
    "server": cmd_server,
    "bench": cmd_bench,
}

if __name__ == "__main__":
    sys.exit(main())
