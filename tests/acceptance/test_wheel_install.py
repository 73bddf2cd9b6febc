"""The pip install path: a wheel of the project, installed (not editable) into a fresh
virtual environment, works from a directory outside the checkout, migrations included.

The wheel is built offline (``--no-build-isolation`` with the setuptools of the test's own
environment, which ``make install`` provides; an older one makes pip fetch the build tools
instead) from a copy of the checkout, and installed with ``--no-deps``: its
dependencies (and the model package) come from the test's environment through a ``.pth``
file, so nothing is downloaded and the test takes seconds.  That file only adds the
environment's site-packages to ``sys.path``; the ``.pth`` files in there (the editable
install's finder, which points at the checkout) are not run, so ``indexer`` can only be
the installed wheel.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from indexer.db import migrate

from ..conftest import ROOT

IGNORE = shutil.ignore_patterns(
    ".git", ".tmp", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        args, capture_output=True, text=True, timeout=300, check=False, **kwargs
    )


def _build_tools_here() -> bool:
    """Whether this environment can build the wheel by itself: pyproject.toml asks for
    setuptools 69 or newer, and setuptools before 70.1 needs the wheel package too."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    release = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if release < (69, 0):
        return False
    return release >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project's wheel installed; its bin directory."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    offline = ["--no-build-isolation", "--no-index"] if _build_tools_here() else []
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *offline,
         "--disable-pip-version-check", "-q", "-w", str(base / "dist"), "."],
        cwd=source,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("pg_indexer-*.whl")
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site.stdout.strip()) / "_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    pip = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "-q", str(wheel)]
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    return venv / "bin"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INDEXER_", "PYTHON"))}
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def test_the_installed_package_is_the_wheel(installed: Path, tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = _run([str(installed / "indexer"), "--version"], cwd=tmp_path, env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"indexer {version}"
    where = _run(
        [str(installed / "python"), "-c",
         "import indexer, indexer._migrations as m; print(indexer.__file__); print(m.__file__)"],
        cwd=tmp_path,
        env=_env(),
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(installed.parent), where.stdout
        assert not Path(path).is_relative_to(ROOT), where.stdout


def test_embed_from_the_installed_package(
    installed: Path, tmp_path: Path, model_cache: Path
) -> None:
    result = _run(
        [str(installed / "indexer"), "embed"],
        input='{"text": "hello world", "id": 7}\n',
        cwd=tmp_path,
        env=_env(INDEXER_MODEL_CACHE=str(model_cache)),
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["id"] == 7 and record["text"] == "hello world"
    assert len(record["embedding"]) == 384


def test_migrate_from_the_installed_package(
    installed: Path, tmp_path: Path, empty_database: str
) -> None:
    env = _env(DATABASE_URL=empty_database)
    first = _run([str(installed / "indexer"), "migrate"], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    head = migrate.head_revision()
    assert first.stdout.strip() == f"schema 'public' upgraded from nothing to {head}"
    again = _run([str(installed / "indexer"), "migrate"], cwd=tmp_path, env=env)
    assert again.stdout.strip() == f"schema 'public' is already at revision {head}"


def test_the_web_console_ships_in_the_wheel(installed: Path, tmp_path: Path) -> None:
    code = (
        "from indexer.http.console import shell; s = shell(); "
        "print(len(s.page.body), len(s.script.body), len(s.style.body))"
    )
    result = _run([str(installed / "python"), "-c", code], cwd=tmp_path, env=_env())
    assert result.returncode == 0, result.stderr
    assert all(int(size) > 1000 for size in result.stdout.split()), result.stdout
