"""The loader of named SQL statements, and the shipped queries.sql itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import indexer
from indexer.store.queries import QUERIES, load

PACKAGE = Path(indexer.__file__).parent


def test_blocks_are_split_at_their_headers_and_keep_inner_comments() -> None:
    queries = load("-- one --\n-- why it exists\nSELECT 1;\n\n-- two --\nSELECT 2\n")
    assert queries == {"one": "-- why it exists\nSELECT 1", "two": "SELECT 2"}


def test_a_name_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'one' is defined twice"):
        load("-- one --\nSELECT 1;\n-- one --\nSELECT 2;\n")


def test_text_before_the_first_header_is_not_a_query() -> None:
    assert load("-- a file comment\n-- one --\nSELECT 1") == {"one": "SELECT 1"}


def test_every_query_the_store_runs_is_defined() -> None:
    # The Store's own module and its mixins (which run them through the Store's _execute).
    source = "".join(path.read_text() for path in sorted((PACKAGE / "store").glob("*.py")))
    # (_locking_call and _waiting_for_chunks are functions of sources.py and models.py:
    # the store is their first argument.)
    runs = (
        r"(?:_execute|_one|_source_call|_locking_call|_waiting_for_chunks)"
        r'\(\s*(?:self,\s*)?"([a-z_]+)"'
    )
    used = set(re.findall(runs, source))
    used |= set(re.findall(r'QUERIES\["([a-z_]+)"\]', source))
    # Steps of one transaction (_execute_all): ("name", {...}) or ("name", params).
    steps = r'\(\s*"([a-z_]+)",\s*(?:\{|params\b|stored\b|_model_vectors\()'
    used |= set(re.findall(steps, source))
    assert used, "the pattern no longer finds the store's queries"
    assert used <= set(QUERIES), used - set(QUERIES)
    assert set(QUERIES) <= used, f"defined but never run: {set(QUERIES) - used}"


def test_only_the_store_runs_the_named_queries() -> None:
    runners = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "QUERIES[" in path.read_text()
    }
    assert runners == {"store/store.py"}
