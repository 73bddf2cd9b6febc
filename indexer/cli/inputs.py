"""What the commands read from the user beyond options: JSON objects given as option
values (``--filter``, ``--metadata``) and JSON lines on stdin (``embed``, ``documents
add``), each bad value named by its option or line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TextIO

from indexer.exceptions import InvalidInput


def json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{option}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidInput(f'{option}: expected a JSON object such as {{"lang": "en"}}')
    return value


def json_lines(stream: TextIO, size: int) -> Iterator[list[dict[str, Any]]]:
    """Records in chunks of ``size``; a bad line ends the stream after the good lines
    before it have been yielded, so their output is not lost."""
    chunk: list[dict[str, Any]] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            chunk.append(_parse_line(line, number))
        except InvalidInput:
            if chunk:
                yield chunk
            raise
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parse_line(line: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise InvalidInput(f"line {number}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InvalidInput(f'line {number}: expected an object with a string "text" field')
    return record
