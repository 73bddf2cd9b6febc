"""What each entry point loads: a daemon without --http pays for no web stack; and no
chain of imports among ``indexer`` modules leads back to where it started."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import indexer

WEB_STACK = ("fastapi", "uvicorn", "starlette", "pydantic")


def loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = f"{statement}\nimport sys\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return [m for m in result.stdout.strip().split(",") if m]


@pytest.mark.parametrize(
    "statement",
    [
        "import indexer.cli; indexer.cli.build_parser()",
        "from indexer.app import Daemon, Indexer",
    ],
)
def test_the_command_and_the_daemon_load_no_web_stack(statement: str) -> None:
    assert loaded_after(statement, WEB_STACK) == []


def test_the_http_api_is_where_the_web_stack_is() -> None:
    # The check above must be able to fail: importing the API does load it.
    assert "fastapi" in loaded_after("import indexer.http", WEB_STACK)


MODEL_STACK = ("onnxruntime", "onnx", "tokenizers", "indexer.embedding")


def test_the_sqlalchemy_models_load_no_model() -> None:
    statement = "import indexer.models"
    assert loaded_after(statement, MODEL_STACK + WEB_STACK) == []
    assert loaded_after(statement, ("sqlalchemy", "pgvector.sqlalchemy")) == [
        "sqlalchemy",
        "pgvector.sqlalchemy",
    ]


def test_the_model_check_can_fail() -> None:
    assert "indexer.embedding" in loaded_after("from indexer import Embedder", MODEL_STACK)


PACKAGE = Path(indexer.__file__).parent


def module_graph() -> dict[str, set[str]]:
    """Each ``indexer`` module and the ``indexer`` modules it imports, at any level of its
    code (a function-level import still closes a circle when the function runs)."""
    paths = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from a import b` imports the module a.b if there is one, else a.
                imported.update(
                    f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names
                )
        graph[name] = {m for m in imported if m in paths and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        path.append(module)
        for target in sorted(graph[module]):
            if target in path:
                found.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return found


def test_no_import_cycle_among_indexer_modules() -> None:
    graph = module_graph()
    assert {"indexer.cli", "indexer.cli.parser", "indexer.testing", "indexer.bench"} <= set(graph)
    assert [" -> ".join(c) for c in cycles(graph)] == []


def test_the_cycle_check_can_fail() -> None:
    graph = module_graph()
    assert cycles(graph) == []
    # The circle the CLI package broke, put back: it is found.
    graph["indexer.bench.documents"].add("indexer.testing")
    graph["indexer.testing"].add("indexer.cli")
    assert cycles(graph) != []
