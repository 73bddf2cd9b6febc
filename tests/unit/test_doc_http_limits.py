"""The HTTP reference's "Limits" table (docs/_notes/http.md) states the bounds the code
keeps: each row's figures are the defaults of HttpLimits and the shared limits."""

from __future__ import annotations

import re

from indexer.http.bounds import BODY_COST, HttpLimits
from indexer.http.resources import MODEL_CALLS, SEARCH_CONNECTIONS
from indexer.limits import MAX_INPUTS, MAX_K, MAX_TEXT_CHARS, MAX_TEXTS

from ..doc_examples import ROOT

MIB = 1024 * 1024


def _rows() -> dict[str, str]:
    text = (ROOT / "docs" / "_notes" / "http.md").read_text(encoding="utf-8")
    table = text.split("## Limits\n", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = " | ".join(cells[1:])
    return rows


def test_the_limits_table_states_the_codes_bounds() -> None:
    limits = HttpLimits()
    expected = {
        "request head (request line and headers)": [f"within {limits.head_timeout:g} s"],
        "request body": [f"{limits.max_body_bytes // MIB} MiB", "413"],
        "one `/search` answer": [f"{limits.max_answer_bytes // MIB} MiB", "200"],
        "time to send the body": [f"{limits.body_timeout:g} s", "408"],
        "bodies in progress, all requests together": [
            f"{limits.memory_budget // MIB} MiB",
            f"{BODY_COST} times",
            "503",
        ],
        "JSON values in one body": [f"{limits.max_json_items:,}", "413"],
        "nesting of arrays and objects": [f"{limits.max_depth}", "422"],
        "`/search` `filter`": [f"{limits.max_filter_bytes // 1024} KiB", "422"],
        "texts or chunks per `/embed`": [f"{MAX_TEXTS}", "413"],
        "inputs per `/v1/embeddings`": [f"{MAX_INPUTS:,}", "400"],
        "characters per text, chunk or query": [f"{MAX_TEXT_CHARS:,}", "413"],
        "`k`": [f"1-{MAX_K:,}", "422"],
        "requests in progress (`/health` not counted)": [f"{limits.max_requests}", "503"],
        "open sockets": [f"{limits.max_connections:,}"],
        "threads per endpoint": [
            f"{limits.embed_threads} for `/embed`",
            f"{limits.search_threads} for `/search`",
        ],
        "model calls running at once from HTTP": [f"{MODEL_CALLS} (more wait"],
        "SQL statements of the API (`/search`, `/health`, `/metrics`)": [
            f"{limits.statement_timeout:g} s",
            "503",
        ],
        f"waiting for one of `/search`'s {SEARCH_CONNECTIONS} connections": [
            f"{limits.pool_wait:g} s",
            "503",
        ],
        "one `/search` in all, queueing included": [f"{limits.search_deadline:g} s", "503"],
    }
    rows = _rows()
    assert set(rows) == set(expected)
    for row, figures in expected.items():
        for figure in figures:
            assert re.search(rf"(?<![\d,]){re.escape(figure)}", rows[row]), (row, figure)
