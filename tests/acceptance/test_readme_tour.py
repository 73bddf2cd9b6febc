"""README's five-minute tour runs as a reader runs it, beside a real `indexer run`: the
insert in psql, `indexer status` and `indexer search` printing what README shows, the SQL
in psql, `indexer embed`, and the Python API (tests/acceptance/doc_runner.py runs it;
the sources tour that used to follow it is docs/how-to/own-table.md, run by
test_doc_examples.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.embedding import Embedder

from ..doc_examples import ROOT, read_page
from .doc_runner import run_page


def test_the_five_minute_tour_runs_and_prints_what_readme_shows(
    database: str,
    model_cache: Path,
    embedder: Embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    page = read_page(ROOT / "README.md")
    tagged = [b.tag for b in page.blocks if b.not_run is None]
    assert tagged.count("sh") >= 4 and "sql" in tagged and "python" in tagged, tagged
    assert sum(b.output is not None for b in page.blocks) >= 2  # status and search
    run_page(page, database, model_cache, embedder, tmp_path, monkeypatch)
