"""The commands about the database and the daemon: ``migrate``, ``dsn``, ``server``
(the embedded PostgreSQL) and ``run``.
"""

from __future__ import annotations

import argparse
import os
import sys

from indexer.app import Daemon, EmbedderLoader
from indexer.cli.output import visible
from indexer.db import migrate, server
from indexer.db.connect import connect, redact, resolve_dsn
from indexer.exceptions import IndexerError, InvalidInput
from indexer.settings import Settings


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
