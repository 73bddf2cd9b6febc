"""What the sections of one bench run share: options, database, model, corpus."""

from __future__ import annotations

import argparse
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from indexer.bench.common import Floats
from indexer.bench.corpus import Corpus
from indexer.bench.plan import Plan
from indexer.db import connect as db
from indexer.embedding import Embedder
from indexer.settings import Settings


@dataclass
class Context:
    args: argparse.Namespace
    settings: Settings
    plan: Plan
    dsn: str
    #: Autocommit, search_path ``public``: creates and drops the scratch schemas.
    admin: db.Connection
    embedder: Embedder
    corpus: Corpus
    #: Daemon logs; a temporary folder removed when the bench ends.
    workdir: Path
    #: ONNX vectors of corpus.short + corpus.mixed, kept by the model section so the
    #: search section need not embed them again.
    vectors: Floats | None = None
    #: `indexer run` subprocesses still to stop, whatever happens.
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def schema(self, section: str) -> str:
        return f"{self.args.bench_schema}_{section}"
