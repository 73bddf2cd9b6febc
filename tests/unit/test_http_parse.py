"""Request bodies from bytes: counted and depth-checked before parsing, parsed strictly."""

from __future__ import annotations

import pytest

from indexer.http.bounds import HttpLimits
from indexer.http.parse import BodyError, check_shape, parse_body
from indexer.http.schemas import EmbedRequest, SearchRequest

LIMITS = HttpLimits(max_json_items=10, max_depth=3)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"texts": ["a", "b"]}',
        b'{"texts": ["' + b"x, y: [z] {w}" * 1000 + b'"]}',  # brackets inside strings
        b'{"texts": ["say \\"hi\\", then \\\\", "b"]}',  # escapes
        b'{"a": {"b": [1]}}',
    ],
)
def test_shapes_within_the_limits_pass(raw: bytes) -> None:
    check_shape(raw, LIMITS)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"texts": [' + b",".join([b'"a"'] * 11) + b"]}", 413),
        (b"[" + b",".join([b"1"] * 11) + b"]", 413),
        (b"[" + b",".join([b"{}"] * 11) + b"]", 413),
        (b'["\\\\",' * 6 + b"]", 413),  # strings ending in an escaped backslash
        (b'{"a": {"b": [[1]]}}', 422),
        (b"[" * 4 + b"]" * 4, 422),
    ],
)
def test_shapes_past_the_limits_are_refused(raw: bytes, status: int) -> None:
    with pytest.raises(BodyError) as info:
        check_shape(raw, LIMITS)
    assert info.value.status == status


def test_a_body_parses_into_its_model_strictly() -> None:
    body = parse_body(b'{"query": "x", "k": 3, "filter": {"n": 1.5}}', SearchRequest, HttpLimits())
    assert (body.query, body.k, body.filter) == ("x", 3, {"n": 1.5})
    for bad in (b'{"query": "x", "k": true}', b'{"query": "x", "k": "3"}'):
        with pytest.raises(BodyError, match="k: Input should be a valid integer"):
            parse_body(bad, SearchRequest, HttpLimits())
    with pytest.raises(BodyError, match="chunk_id"):
        parse_body(b'{"chunks": [{"chunk_id": false, "content": "a"}]}', EmbedRequest, HttpLimits())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"query": NaN}', "NaN"),
        (b'{"query": 1e999}', "out of range"),
        (b'{"query": ' + b"9" * 65 + b"}", "more than 64 digits"),
        (b'{"query": "\xff"}', "not valid UTF-8"),
        (b'{"query": ', "not valid JSON"),
    ],
)
def test_what_json_or_jsonb_cannot_hold_is_422(raw: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message) as info:
        parse_body(raw, SearchRequest, HttpLimits())
    assert info.value.status == 422 and "\n" not in str(info.value)
