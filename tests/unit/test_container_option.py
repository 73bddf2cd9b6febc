"""INDEXER_TEST_POSTGRES: the test session's server option, run as a real pytest session.

Each case runs pytest in a subprocess on one small test file of this suite.  The
container path itself needs Docker (``make test-container``); here we check what can be
checked without it: the default never imports testcontainers, and an option that cannot
work fails the session with one line before any test runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT

QUICK_TESTS = "tests/unit/test_dsn.py"

# A stand-in for the testcontainers package (not for Docker, nor the database): it
# records that it was imported, and its Docker client fails as the real one does when
# no engine answers.
STAND_IN = {
    "testcontainers/__init__.py": (
        "import os\nwith open(os.environ['MARKER'], 'a') as f:\n    f.write('imported\\n')\n"
    ),
    "testcontainers/core/__init__.py": "",
    "testcontainers/core/docker_client.py": (
        "class DockerClient:\n"
        "    def __init__(self):\n"
        "        raise ConnectionError(\n"
        "            \"Error while fetching server API version: ('Connection aborted.', \"\n"
        "            \"FileNotFoundError(2, 'No such file or directory'))\\nmore detail\"\n"
        "        )\n"
    ),
    "testcontainers/postgres/__init__.py": "class PostgresContainer: ...\n",
}


def session(mode: str | None, tmp_path: Path, stand_in: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXER_TEST_POSTGRES")}
    if mode is not None:
        env["INDEXER_TEST_POSTGRES"] = mode
    path = [str(ROOT)]
    if stand_in:
        for name, text in STAND_IN.items():
            (tmp_path / "site" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "site" / name).write_text(text)
        path.insert(0, str(tmp_path / "site"))
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["MARKER"] = str(tmp_path / "marker")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", QUICK_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize("mode", [None, "embedded"])
def test_the_default_never_imports_testcontainers(mode: str | None, tmp_path: Path) -> None:
    result = session(mode, tmp_path, stand_in=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "marker").exists()


def test_the_container_option_imports_it(tmp_path: Path) -> None:
    # The check above can fail: the same stand-in is seen when the option asks for it.
    session("container", tmp_path, stand_in=True)
    assert (tmp_path / "marker").read_text() == "imported\n"


def test_no_docker_engine_is_one_line(tmp_path: Path) -> None:
    result = session("container", tmp_path, stand_in=True)
    assert result.returncode == 4  # pytest's usage error: no test ran
    assert error_lines(result) == [
        "ERROR: INDEXER_TEST_POSTGRES=container needs a running Docker engine: Error while "
        "fetching server API version: ('Connection aborted.', "
        "FileNotFoundError(2, 'No such file or directory'))"
    ]


@pytest.mark.skipif(
    importlib.util.find_spec("testcontainers") is not None, reason="testcontainers is installed"
)
def test_no_testcontainers_is_one_line(tmp_path: Path) -> None:
    result = session("container", tmp_path, stand_in=False)
    assert result.returncode == 4
    assert error_lines(result) == [
        "ERROR: INDEXER_TEST_POSTGRES=container needs testcontainers: "
        "pip install -e '.[container]' (No module named 'testcontainers')"
    ]


def test_an_unknown_mode_is_one_line(tmp_path: Path) -> None:
    result = session("docker", tmp_path, stand_in=False)
    assert result.returncode == 4
    assert error_lines(result) == [
        "ERROR: INDEXER_TEST_POSTGRES='docker': use 'embedded' (the default), 'container' or 'url'"
    ]


def test_the_docs_fixture_for_applications_calls_migrate_as_it_is() -> None:
    import ast
    import inspect
    import re

    from indexer.db import migrate

    # docs/how-to/test-your-application.md: not run by the docs' tests (no Docker here).
    page = ROOT / "docs" / "how-to" / "test-your-application.md"
    (block,) = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    calls = [
        node
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "migrate.upgrade"
    ]
    assert len(calls) == 1
    inspect.signature(migrate.upgrade).bind(*(ast.unparse(a) for a in calls[0].args))
    assert "from indexer.db import migrate" in block
    assert 'PostgresContainer("pgvector/pgvector:pg17", driver=None)' in block
