"""What each entry point loads: a daemon without --http pays for no web stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
