"""The HTTP API's sample answers are what the API answers now: the requests of the HTTP
reference (docs/_notes/http.md, the notes of the generated page) are sent with curl to a
real `indexer run --http` over the five-minute tour's rows, and each answer must match
the sample below its request (vectors cut with ``...``, decimals to within 5e-4: the last
digits of a float32 model may differ between CPUs). tests/acceptance/doc_runner.py runs
it."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.embedding import Embedder

from ..doc_examples import ROOT, read_page
from .doc_runner import run_page

HTTP = ROOT / "docs" / "_notes" / "http.md"


def test_the_http_reference_shows_what_the_api_answers(
    database: str,
    model_cache: Path,
    embedder: Embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    page = read_page(HTTP)
    answered = [b.text for b in page.blocks if b.output is not None and b.not_run is None]
    for path in ("/health", "/embed", "/search"):
        assert any(path in request for request in answered), path
    run_page(page, database, model_cache, embedder, tmp_path, monkeypatch)
