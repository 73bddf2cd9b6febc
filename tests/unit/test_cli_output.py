"""`indexer.cli.visible`: user-supplied text on one line of plain-text output."""

from __future__ import annotations

import pytest

from indexer.cli import visible


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
