"""README's sample answers of POST /embed and POST /search are what the API answers now:
benchmarks/readme_examples.py sends README's requests to the real HTTP API over the tour's
rows, and every line it prints must be in README, its numbers equal to within 5e-4 (the
last digits of a float32 model may differ between CPUs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT
from ..helpers import cli_env

NUMBER = re.compile(r"-?\d+\.\d+")  # floats only: ids and dims must match exactly


def _pattern(line: str) -> re.Pattern[str]:
    parts = NUMBER.split(line)
    return re.compile(r"(-?\d+\.\d+)".join(re.escape(part) for part in parts))


def test_readme_shows_what_the_api_answers(database: str, model_cache: Path) -> None:
    env = cli_env(database, model_cache, INDEXER_LOG_LEVEL="WARNING")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "readme_examples.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    readme = (ROOT / "README.md").read_text()
    for line in lines:
        match = _pattern(line).search(readme)
        assert match is not None, f"README does not show this answer:\n{line}"
        expected = [float(x) for x in NUMBER.findall(line)]
        shown = [float(x) for x in match.groups()]
        assert all(abs(a - b) <= 5e-4 for a, b in zip(expected, shown, strict=True)), (
            line,
            match.group(0),
        )
