"""``indexer models list|add|activate|drop``: the model registry (migration 0009)."""

from __future__ import annotations

import argparse
import json

from indexer.app import EmbedderLoader, Indexer
from indexer.cli.output import jsonable, model_line, plural, visible
from indexer.embedding.remote import RemoteConfig
from indexer.settings import Settings


def cmd_models(args: argparse.Namespace, settings: Settings, load: EmbedderLoader) -> int:
    with Indexer(settings) as ix:
        if args.action == "list":
            for row in ix.models():
                print(
                    json.dumps({k: jsonable(v) for k, v in row.items()})
                    if args.json
                    else model_line(row)
                )
        elif args.action == "add":
            name = ix.add_model(
                args.folder,
                name=args.name,
                pooling=args.pooling,
                query_prefix=args.query_prefix,
                document_prefix=args.document_prefix,
                max_tokens=args.max_tokens,
                variant=args.variant,
                halfvec=args.halfvec,
            )
            print(
                f"added model {visible(name)}{' (halfvec)' if args.halfvec else ''}; the "
                "daemon embeds every chunk with it in the background: `indexer models list` "
                f"shows progress, then `indexer models activate {name}`"
            )
        elif args.action == "add-remote":
            ix.add_remote_model(
                args.name, remote_config(args), halfvec=args.halfvec, probe=not args.no_probe
            )
            print(
                f"added remote model {visible(args.name)}; the daemon embeds every chunk with "
                "it in the background: `indexer models list` shows progress, then "
                f"`indexer models activate {args.name}`"
            )
        elif args.action == "activate":
            missing = ix.activate_model(args.name, force=args.force)
            extra = f" ({plural(missing, 'chunk')} without its vector yet)" if missing else ""
            print(f"model {visible(args.name)} is active: search uses it{extra}")
        else:
            ix.drop_model(args.name)
            print(f"dropped model {visible(args.name)} and its vectors")
    return 0


#: ``add-remote``'s options that RemoteConfig takes as they are (None: its default).
_REMOTE_OPTIONS = (
    ("timeout", "timeout_s"),
    ("inputs_per_request", "inputs_per_request"),
    ("tokens_per_request", "tokens_per_request"),
    ("max_input_tokens", "max_input_tokens"),
    ("in_flight", "in_flight"),
    ("query_prefix", "query_prefix"),
    ("document_prefix", "document_prefix"),
    ("price_per_million", "price_per_million"),
    ("api_key_env", "api_key_env"),
    ("tokenizer", "tokenizer"),
)


def remote_config(args: argparse.Namespace) -> RemoteConfig:
    """``indexer models add-remote``'s options as a checked RemoteConfig."""
    given = {field: getattr(args, option) for option, field in _REMOTE_OPTIONS}
    return RemoteConfig.from_dict(
        {
            "url": args.url,
            "model": args.provider_model,
            "dimension": args.dimension,
            **{k: v for k, v in given.items() if v is not None},
        }
    )
