"""Named SQL statements, loaded from queries.sql and console.sql (what the web console
reads besides the status views).

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


#: The files of named queries, beside this module.
FILES = ("queries.sql", "console.sql")


def load_files(names: tuple[str, ...] = FILES) -> dict[str, LiteralString]:
    """Every named query of ``names``; a name may be defined once in them all."""
    queries: dict[str, LiteralString] = {}
    for file in names:
        text = importlib.resources.files(__package__).joinpath(file).read_text(encoding="utf-8")
        for name, query in load(text).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice ({file})")
            queries[name] = query
    return queries


QUERIES: dict[str, LiteralString] = load_files()
