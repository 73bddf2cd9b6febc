"""The argument parser, and the settings built from its options.

Every setting is an option of the subcommands that read it (:data:`USES`) and also an
``INDEXER_*`` environment variable; ``--help`` names both.  This module knows the
options, not what the commands do, so it loads no command code (the bench's options
come from :mod:`indexer.bench`, which is light at import).
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import MISSING
from typing import Any

from indexer.exceptions import ConfigurationError
from indexer.settings import FIELDS, Settings, env_name, value_parser

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
    "sources": (*_DATABASE, "chunk_tokens", "chunk_overlap", *_LOGS),
    "documents": (*_DATABASE, *_LOGS),
    "models": (*_DATABASE, "model_cache", *_LOGS),
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
    parser.add_argument("--version", action="version", version=f"indexer {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[settings_of[name]], help=help_text, description=help_text
        )

    add(
        "migrate",
        "create or upgrade the schema (tables, triggers, indexes, views, functions)",
    )
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
    search.add_argument(
        "--model",
        metavar="NAME",
        help="search this registered model's vectors (`indexer models list`; default: the "
        "active one)",
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
        "recut",
        help="cut every document of every source again, with INDEXER_CHUNK_TOKENS and "
        "INDEXER_CHUNK_OVERLAP as given now (the daemon refuses other settings than those "
        "recorded)",
        parents=[common],
    )
    source_actions.add_parser(
        "remove",
        help="unregister a source: drop its triggers, delete its documents' chunks "
        "(the table and its rows stay)",
        parents=[common],
    ).add_argument("name", metavar="NAME", help="the source's name (`indexer sources list`)")
    _models_parser(sub, settings_of["models"])
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
        add(
            "bench",
            "measure model, backfill, latency, search, memory, claim, cache and documents",
        )
    )
    server_cmd = add("server", "start or stop the embedded PostgreSQL")
    server_cmd.add_argument("action", choices=["start", "stop"])
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
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


def version() -> str:
    """The installed distribution's version, for ``--version``."""
    try:
        return importlib.metadata.version("pg-indexer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _models_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    about = "the models whose vectors the indexer keeps: list, add, activate, drop"
    models = sub.add_parser("models", help=about, description=about)
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "list",
        help="per model: active, dimension, chunks covered and missing, work queued, failed",
        parents=[common],
    ).add_argument("--json", action="store_true", help="one JSON object per line")
    add = actions.add_parser(
        "add",
        help="register a model; the daemon embeds every chunk with it in the background "
        "(new text first) until it can be activated",
        parents=[common],
    )
    add.add_argument(
        "folder",
        metavar="FOLDER",
        help="a sentence-transformers folder (BERT or MPNet), a folder with model.onnx + "
        "tokenizer.json, or `packaged` (all-MiniLM-L6-v2)",
    )
    add.add_argument("--name", help="the model's name (default: the folder's)")
    add.add_argument(
        "--pooling", choices=("mean", "cls"), help="for model.onnx folders without a config"
    )
    add.add_argument("--query-prefix", metavar="TEXT", help="put before every query")
    add.add_argument("--document-prefix", metavar="TEXT", help="put before every text embedded")
    add.add_argument("--max-tokens", type=int, metavar="N", help="tokens the model reads")
    add.add_argument(
        "--variant", choices=("fp32", "int8"), default="fp32", help="fp32 (default) or int8"
    )
    add.add_argument(
        "--halfvec",
        action="store_true",
        help="store its vectors as halfvec (2 bytes a dimension: half the table and index)",
    )
    _remote_parser(actions, common)
    activate = actions.add_parser(
        "activate",
        help="make a model the one search uses (one transaction; refused while chunks lack "
        "its vectors, unless --force)",
        parents=[common],
    )
    activate.add_argument("name", metavar="NAME")
    activate.add_argument(
        "--force",
        action="store_true",
        help="switch although some chunks lack its vectors (missing from its answers until "
        "embedded)",
    )
    actions.add_parser(
        "drop", help="drop a model that is not active, and its vectors", parents=[common]
    ).add_argument("name", metavar="NAME")


def _remote_parser(actions: Any, common: argparse.ArgumentParser) -> None:
    remote = actions.add_parser(
        "add-remote",
        help="register a model an OpenAI-compatible server computes (POST URL/embeddings); "
        "asked for one vector first",
        parents=[common],
    )
    remote.add_argument("url", metavar="URL", help="the server's base URL, with /v1")
    remote.add_argument("--name", required=True, help="the model's name in the registry")
    remote.add_argument(
        "--provider-model", required=True, metavar="MODEL", help="the model name the server knows"
    )
    remote.add_argument("--dimension", required=True, type=int, metavar="N")
    remote.add_argument(
        "--api-key-env",
        metavar="VARIABLE",
        help="the environment variable holding the API key (the key is never stored)",
    )
    remote.add_argument("--query-prefix", metavar="TEXT", help="put before every query")
    remote.add_argument("--document-prefix", metavar="TEXT", help="put before every text embedded")
    remote.add_argument("--timeout", type=float, metavar="SECONDS", help="per request (60)")
    remote.add_argument("--inputs-per-request", type=int, metavar="N", help="(2048)")
    remote.add_argument(
        "--tokens-per-request",
        type=int,
        metavar="N",
        help="estimated from UTF-8 bytes, conservatively (300000)",
    )
    remote.add_argument(
        "--max-input-tokens", type=int, metavar="N", help="longer inputs are truncated (counted)"
    )
    remote.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="the model's tokenizer.json: tokens counted exactly, not estimated from bytes",
    )
    remote.add_argument("--in-flight", type=int, metavar="N", help="requests at once (4)")
    remote.add_argument(
        "--price-per-million", type=float, metavar="PRICE", help="per million tokens: the cost"
    )
    remote.add_argument("--halfvec", action="store_true", help="store its vectors as halfvec")
    remote.add_argument(
        "--no-probe", action="store_true", help="register without asking the server first"
    )
