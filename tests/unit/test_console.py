"""The web console's pieces that need no server: which paths open without a token, how a
client's Accept-Encoding is read, and the JSON form of database values."""

from __future__ import annotations

import datetime
import decimal

import pytest

from indexer.http.console import SHELL_PATHS, TOKEN_FREE_PATHS, _accepts_gzip, plain
from indexer.http.middleware import OPEN_PATHS, RequireToken
from tests.unit.test_http_middleware import answer, request


@pytest.mark.parametrize(
    ("path", "status"),
    [("/", 200), ("/console/console.js", 200), ("/console/console.css", 200),
     ("/health", 200), ("/console/api/overview", 401), ("/console/x.js", 401),
     ("/metrics", 401), ("/search", 401)],
)  # fmt: skip
def test_only_the_shell_and_health_open_without_the_token(path: str, status: int) -> None:
    guard = RequireToken(answer(200), ["right"], open_paths=TOKEN_FREE_PATHS)
    assert request(guard, path=path).status == status
    assert set(TOKEN_FREE_PATHS) == {*OPEN_PATHS, *SHELL_PATHS}


@pytest.mark.parametrize(
    ("header", "gzip"),
    [("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8", True), ("gzip;q=0", False),
     ("identity", False), ("", False), ("*", True), ("gzip;q=x", False), ("GZIP", True)],
)  # fmt: skip
def test_accept_encoding(header: str, gzip: bool) -> None:
    assert _accepts_gzip(header) is gzip


def test_values_are_written_as_status_json_writes_them() -> None:
    at = datetime.datetime(2026, 12, 5, 10, 30, tzinfo=datetime.UTC)
    row = {
        "eta": datetime.timedelta(minutes=2, seconds=3),
        "at": at,
        "rate": decimal.Decimal("2.50"),
        "none": None,
        "flag": True,
        "nested": [{"lag": datetime.timedelta(seconds=1.5)}],
    }
    assert plain(row) == {
        "eta": 123.0,
        "at": "2026-12-05T10:30:00+00:00",
        "rate": 2.5,
        "none": None,
        "flag": True,
        "nested": [{"lag": 1.5}],
    }
