"""Where the SQL this project ships uses settings that exist only from pgvector 0.8 on.

pgvector 0.7 has none of them, and refuses them (it reserves the ``hnsw.`` and
``ivfflat.`` prefixes), so a statement naming one must be **guarded**: it runs only
where the server has pgvector 0.8 or newer.  A statement is guarded when

1. it checks the installed version itself: it reads ``extversion`` from
   ``pg_extension`` (a ``DO`` block whose ``IF`` tests it, or a ``SELECT set_config(...)
   FROM pg_extension WHERE ... extversion ...`` that selects no row on 0.7); or
2. it is a named query of ``indexer/store/queries.sql`` that the Python code runs only
   inside ``if <version> >= (0, 8):`` (checked on the code's syntax tree).

Comments do not count: only the statements themselves are read.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

#: pgvector's settings that 0.7 does not have.
SETTINGS_08 = (
    "hnsw.iterative_scan",
    "hnsw.max_scan_tuples",
    "hnsw.scan_mem_multiplier",
    "ivfflat.iterative_scan",
    "ivfflat.max_probes",
)
_SETTING = re.compile("|".join(re.escape(s) for s in SETTINGS_08), re.IGNORECASE)
_DOLLAR = re.compile(r"\$[A-Za-z_]*\$")


@dataclass(frozen=True)
class Use:
    """A statement naming a 0.8-only setting."""

    where: str
    statement: str

    @property
    def checks_version(self) -> bool:
        return "pg_extension" in self.statement and "extversion" in self.statement


def statements(text: str) -> list[str]:
    """SQL text cut into statements, comments removed (quotes and $$ bodies respected)."""
    out: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 2
        elif ch == "'":
            end = i + 1
            while end < len(text):
                if text[end] == "'" and text.startswith("''", end):
                    end += 2
                elif text[end] == "'":
                    break
                else:
                    end += 1
            current.append(text[i : end + 1])
            i = end + 1
        elif (tag := _DOLLAR.match(text, i)) is not None:
            end = text.find(tag.group(), tag.end())
            end = len(text) if end < 0 else end + len(tag.group())
            current.append(text[i:end])
            i = end
        elif ch == ";":
            out.append("".join(current).strip())
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    out.append("".join(current).strip())
    return [s for s in out if s]


def uses(where: str, text: str) -> list[Use]:
    return [Use(where, s) for s in statements(text) if _SETTING.search(s)]


def python_strings(path: Path) -> list[str]:
    """The string constants of a Python module, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def _is_08_check(test: ast.expr) -> bool:
    """``<anything> >= (0, 8)``."""
    return (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.GtE)
        and isinstance(test.comparators[0], ast.Tuple)
        and [getattr(e, "value", None) for e in test.comparators[0].elts] == [0, 8]
    )


def unguarded_runs(source: str, names: set[str]) -> list[int]:
    """Lines of ``source`` where ``QUERIES[name]`` (name in ``names``) is used outside an
    ``if ... >= (0, 8):`` block."""
    tree = ast.parse(source)
    lines: list[int] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "QUERIES"
            and isinstance(node.slice, ast.Constant)
            and node.slice.value in names
            and not guarded
        ):
            lines.append(node.lineno)
        if isinstance(node, ast.If) and _is_08_check(node.test):
            for statement in node.body:
                visit(statement, True)
            for statement in node.orelse:
                visit(statement, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return lines
