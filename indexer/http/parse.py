"""Request bodies from bytes to pydantic models, bounded before ``json.loads`` runs.

Runs in the endpoint's worker thread, never on the event loop.  Before parsing, the
raw bytes are counted (C-speed ``bytes.count`` and one regular expression over at
most a few thousand strings): a body with more JSON values than
``HttpLimits.max_json_items`` is 413, one nested deeper than ``max_depth`` is 422, so
that no body of legal size can make the parser build millions of objects or recurse
a thousand levels.  Parsing itself refuses what JSON or jsonb cannot hold (NaN,
Infinity, numbers beyond float range, integers of more than ``MAX_DIGITS`` digits,
invalid UTF-8) with 422; the models validate strictly (``"5"`` and ``true`` are not
integers).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ValidationError

from indexer.http.bounds import HttpLimits

Model = TypeVar("Model", bound=BaseModel)

#: Digits of one JSON integer.
MAX_DIGITS = 64

#: One JSON string, escapes included (unrolled, so that long strings cost one step).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: Bytes that are not brackets, removed to measure the nesting.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class BodyError(Exception):
    """A body refused while parsing: its status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_body(raw: bytes, model: type[Model], limits: HttpLimits) -> Model:
    """``raw`` as ``model``, or BodyError (413/422) / HTTPException-compatible errors."""
    check_shape(raw, limits)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(422, f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except BodyError:
        raise
    except json.JSONDecodeError as exc:
        raise BodyError(422, f"the body is not valid JSON ({exc.msg} at {exc.pos})") from None
    except (ValueError, RecursionError) as exc:
        raise BodyError(422, f"the body is not valid JSON ({exc})") from None
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise BodyError(422, validation_message(exc.errors())) from None


def check_shape(raw: bytes, limits: HttpLimits) -> None:
    """413 for more than ``max_json_items`` values, 422 for deeper than ``max_depth``."""
    too_many = f"the body holds more than {limits.max_json_items} JSON values"
    # Every string opens with a quote that no backslash precedes, and such quotes are
    # only a string's first or last: the strings are at least half of them.
    quotes = raw.count(b'"') - raw.count(b'\\"')
    if quotes > 2 * limits.max_json_items:
        raise BodyError(413, too_many)
    skeleton = _STRING.sub(b"0", raw)
    items = sum(skeleton.count(c) for c in (b",", b":", b"[", b"{"))
    if items > limits.max_json_items:
        raise BodyError(413, too_many)
    depth = deepest = 0
    for byte in skeleton.translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > limits.max_depth:
        raise BodyError(422, f"the body nests arrays and objects more than {limits.max_depth} deep")


def _no_constant(name: str) -> Any:
    raise BodyError(422, f"the body holds {name}, which JSON does not allow")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(422, f"the number {text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise BodyError(422, f"an integer has more than {MAX_DIGITS} digits")
    return int(text)


def validation_message(errors: Any) -> str:
    """pydantic's errors in one line: the first five, each with where it is."""
    problems = []
    for error in list(errors)[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({error.get('ctx', {}).get('error', '')})"
        problems.append(
            f"{where}: {message}" if where and error.get("type") != "json_invalid" else message
        )
    more = len(list(errors)) - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def as_http_error(exc: BodyError) -> HTTPException:
    return HTTPException(exc.status, str(exc))
