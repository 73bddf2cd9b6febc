"""`indexer.cli.visible`: user-supplied text on one line of plain-text output."""

from __future__ import annotations

import pytest

from indexer.cli import visible
from indexer.cli.output import model_line


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\tb", "a\\r\\tb"),
        ("\x00\x07\x08\x0b\x0c\x1f", "\\x00\\x07\\x08\\x0b\\x0c\\x1f"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("del\x7f", "del\\x7f"),
        ("\x80\x85\x9b2J\x9f", "\\x80\\x85\\x9b2J\\x9f"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("\u202ecod.exe\u202c", "\\u202ecod.exe\\u202c"),
        ("\u202a\u202b\u202d", "\\u202a\\u202b\\u202d"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
        ("lone \ud800 \udfff", "lone \\ud800 \\udfff"),
    ],
)
def test_what_a_terminal_acts_on_is_escaped(text: str, shown: str) -> None:
    assert visible(text) == shown
    assert visible(text).isprintable()


@pytest.mark.parametrize(
    "text",
    ["plain", "C:\\docs\\n.txt", "naïve café ½ ß", "日本語 עברית عربي", "👩\u200d💻 ☕", "a b"],
)
def test_printable_text_is_left_as_it_is(text: str) -> None:
    assert visible(text) == text


def _model_row(index: str) -> dict[str, object]:
    return {
        "model": "tiny",
        "active": False,
        "dimension": 32,
        "halfvec": False,
        "stored_in": "model_2_vectors",
        "covered": 10,
        "chunks": 10,
        "missing": 0,
        "queued": 0,
        "failed": 0,
        "index": index,
    }


@pytest.mark.parametrize(
    ("index", "said"),
    [
        ("none", "; HNSW index not built yet (a daemon builds it once the fill is done)"),
        ("building", "; HNSW index being built"),
        ("broken", "; HNSW index to build again (a build was cut off)"),
        ("ready", ""),
    ],
)
def test_models_list_says_when_a_models_index_is_not_ready(index: str, said: str) -> None:
    assert model_line(_model_row(index)) == (
        "  tiny: 32 dimensions in model_2_vectors; 10/10 chunks covered, 0 missing, 0 queued" + said
    )
