"""The HTTP API's token settings: read like every setting, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.cli import build_parser
from indexer.exceptions import ConfigurationError
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


@pytest.mark.parametrize("blank", [" ", "\n", "\t", " \t\r\n "])
def test_a_blank_token_is_refused_in_one_line(blank: str) -> None:
    # Stripped, it would be the empty token that a bare "Authorization: Bearer" matches.
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"INDEXER_HTTP_TOKEN": blank})
    assert str(info.value) == (
        "INDEXER_HTTP_TOKEN is blank (only whitespace): set it to a secret, "
        "or unset it for an HTTP API without authentication"
    )
    with pytest.raises(ConfigurationError, match="is blank"):
        Settings.from_env({}, http_token=blank)  # as --http-token gives it
    # Empty means unset, as for every variable: no authentication (the start line says so).
    assert Settings.from_env({"INDEXER_HTTP_TOKEN": ""}).http_token is None
