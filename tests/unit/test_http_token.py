"""The HTTP API's token settings: read like every setting, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.cli import build_parser
from indexer.settings import Settings


def test_the_token_settings_come_from_the_environment_and_never_show(tmp_path: Path) -> None:
    env = {"INDEXER_HTTP_TOKEN": "t0p-s3cret", "INDEXER_HTTP_TOKEN_FILE": str(tmp_path / "t")}
    settings = Settings.from_env(env)
    assert settings.http_token == "t0p-s3cret"
    assert settings.http_token_file == tmp_path / "t"
    assert "t0p-s3cret" not in repr(settings) and "t0p-s3cret" not in str(settings)
    assert Settings.from_env({}).http_token is None


def test_the_token_options_are_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    run_help = capsys.readouterr().out
    assert "--http-token" in run_help and "INDEXER_HTTP_TOKEN_FILE" in run_help
