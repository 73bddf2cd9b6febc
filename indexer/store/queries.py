"""Named SQL statements, loaded from queries.sql.

A block starts with a ``-- name --`` line; the statement runs to the next such line.
Plain comment lines inside a block are kept (PostgreSQL ignores them).
"""

from __future__ import annotations

import importlib.resources
import re
from typing import LiteralString, cast

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def load(text: str) -> dict[str, LiteralString]:
    parts = _HEADER.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = cast(LiteralString, body.strip().rstrip(";"))
    return queries


QUERIES: dict[str, LiteralString] = load(
    importlib.resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
)
