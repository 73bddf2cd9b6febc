"""``indexer models list|add|activate|drop``: the model registry (migration 0009)."""

from __future__ import annotations

import argparse
import json

from indexer.app import EmbedderLoader, Indexer
from indexer.cli.output import jsonable, model_line, plural, visible
from indexer.embedding.embedder import Embedder
from indexer.registry import describe_for_registry
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
            record = describe_for_registry(
                args.folder,
                name=args.name,
                pooling=args.pooling,
                query_prefix=args.query_prefix,
                document_prefix=args.document_prefix,
                max_tokens=args.max_tokens,
                variant=args.variant,
            )
            # Opened once now: the graph is built and cached, and a model that cannot
            # run here is refused before it is registered.
            embedder = Embedder(record=record, cache_dir=settings.model_cache, threads=1)
            name = args.name or (f"{embedder.name}-halfvec" if args.halfvec else embedder.name)
            ix.store.add_model(
                name,
                dimension=embedder.dim,
                record=record.as_dict(),
                fingerprint=record.fingerprint,
                halfvec=args.halfvec,
            )
            print(
                f"added model {visible(name)} ({embedder.dim} dimensions"
                f"{', halfvec' if args.halfvec else ''}); the daemon embeds every chunk with it "
                f"in the background: `indexer models list` shows progress, then "
                f"`indexer models activate {name}`"
            )
        elif args.action == "activate":
            missing = ix.store.activate_model(args.name, force=args.force)
            extra = f" ({plural(missing, 'chunk')} without its vector yet)" if missing else ""
            print(f"model {visible(args.name)} is active: search uses it{extra}")
        else:
            ix.store.drop_model(args.name)
            print(f"dropped model {visible(args.name)} and its vectors")
    return 0
