"""Every example of the docs site's pages runs as a reader runs it, against a real
server, and prints what the page shows: one test per page (tests/acceptance/doc_runner.py
runs it). The pages some other test runs are left to it (doc_examples.OWN_TESTS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.embedding import Embedder

from ..doc_examples import OWN_TESTS, Page, all_pages
from .doc_runner import run_page

PAGES = [
    page
    for page in all_pages()
    if page.name not in OWN_TESTS and any(b.not_run is None for b in page.blocks)
]


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_examples_run_and_print_what_the_page_shows(
    page: Page,
    database: str,
    model_cache: Path,
    embedder: Embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_page(page, database, model_cache, embedder, tmp_path, monkeypatch)
