"""README's "Your own tables and long documents" runs as a reader runs it: every sh, sql
and python block of the section, in order, in one database (the CLI's, psql's and the
Python API's steps must not trip over one another)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.db.connect import Connection
from indexer.embedding import Embedder

from ..conftest import ROOT
from ..helpers import cli_env
from .test_sql_examples import TOUR_ROWS

_README = (ROOT / "README.md").read_text()
_SECTION = _README[
    _README.index("## Your own tables and long documents") : _README.index(
        "### Documents: what was measured"
    )
]
BLOCKS = re.findall(r"^```(sh|sql|python)\n(.*?)^```$", _SECTION, re.DOTALL | re.MULTILINE)


def test_the_sources_tour_runs_in_order(
    database: str,
    model_cache: Path,
    conn: Connection,
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [kind for kind, _ in BLOCKS].count("sh") >= 3
    # The five-minute tour's rows, which the section's SQL refers to.
    vectors = embedder.embed([text for text, _ in TOUR_ROWS])
    for (text, metadata), vector in zip(TOUR_ROWS, vectors, strict=True):
        conn.execute(
            "INSERT INTO chunks (content, metadata, embedding) VALUES (%s, %s, %s)",
            (text, metadata, vector),
        )
    env = cli_env(database, model_cache, INDEXER_LOG_LEVEL="WARNING")
    psql = shutil.which("psql")
    assert psql is not None
    indexer = f"{sys.executable} -m indexer.cli"
    for kind, block in BLOCKS:
        if kind == "python":
            for name in ("DATABASE_URL", "INDEXER_MODEL_CACHE"):
                monkeypatch.setenv(name, env[name])
            exec(compile(block, "README.md", "exec"), {})
            continue
        stdin = None
        if kind == "sh":
            command = ["bash", "-e", "-o", "pipefail", "-c"]
            command.append(block.replace(".venv/bin/indexer", indexer))
        else:  # on stdin, as pasted: psql's backslash commands included
            command = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database]
            stdin = block
        result = subprocess.run(
            command, env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, (block, result.stderr)
