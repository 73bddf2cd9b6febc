"""The `indexer` command: parse the arguments, call the application, print the result.

Every setting is an option of every subcommand and also an ``INDEXER_*`` environment
variable (``--help`` names it); the option wins.  Errors the user can act on print
one line on stderr and exit 1.

This package holds :func:`main` and the table of commands; the parser is in
:mod:`~indexer.cli.parser`, the commands in one module per group
(:mod:`~indexer.cli.server`, :mod:`~indexer.cli.search`, :mod:`~indexer.cli.sources`,
:mod:`~indexer.cli.ops`), and what they share in :mod:`~indexer.cli.output` and
:mod:`~indexer.cli.inputs`.  The public names of the former single module are
re-exported (``__all__``), so ``from indexer.cli import ...`` keeps working.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

import psycopg

from indexer import logs
from indexer.app import EmbedderLoader
from indexer.cli.models import cmd_models
from indexer.cli.ops import (
    FAILED_SHOWN,
    STATUS_FIELDS,
    cmd_cache,
    cmd_events,
    cmd_retry,
    cmd_status,
)
from indexer.cli.output import plural, visible
from indexer.cli.parser import USES, build_parser, settings_from_args
from indexer.cli.search import EMBED_CHUNK, cmd_embed, cmd_search
from indexer.cli.server import cmd_dsn, cmd_migrate, cmd_run, cmd_server
from indexer.cli.sources import DOCUMENTS_CHUNK, cmd_documents, cmd_sources
from indexer.embedding import load_embedder
from indexer.exceptions import IndexerError, first_line
from indexer.settings import Settings, unknown_variables

__all__ = [
    "COMMANDS",
    "DOCUMENTS_CHUNK",
    "EMBED_CHUNK",
    "FAILED_SHOWN",
    "STATUS_FIELDS",
    "USES",
    "Command",
    "build_parser",
    "main",
    "plural",
    "visible",
]

logger = logging.getLogger("indexer")

Command = Callable[[argparse.Namespace, Settings, EmbedderLoader], int]


def main(argv: Sequence[str] | None = None, *, load: EmbedderLoader = load_embedder) -> int:
    """Run the command line ``argv``; ``load`` builds the embedder from the settings
    (tests pass a wrapper that injects failures, see :mod:`indexer.testing`)."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
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
            "administrator, to grant it (docs: Roles and least privilege)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("indexer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def cmd_bench(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    """``indexer bench``: the bench loads its sections only when it runs."""
    from indexer import bench

    return bench.main(args, settings)


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
    "models": cmd_models,
    "documents": cmd_documents,
    "server": cmd_server,
    "bench": cmd_bench,
}
