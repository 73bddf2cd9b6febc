"""`--http HOST:PORT` parsing: every bad address is one line naming the format."""

from __future__ import annotations

import pytest

from indexer.exceptions import ConfigurationError
from indexer.http import parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:8080", ("::1", 8080)),
        (" [::]:1 ", ("::", 1)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "8080",
        "127.0.0.1",
        "127.0.0.1:",
        ":8080",
        "::1:8080",
        "host:0",
        "host:65536",
        "host:80a",
        "[::1]8080",
        "a b:80",
        "",
    ],
)
def test_parse_address_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_address(text)
    message = str(info.value)
    assert "HOST:PORT" in message and "\n" not in message
