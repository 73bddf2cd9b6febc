"""The command line's options: each command lists the settings it reads, and an invalid
value is named the way the user gave it."""

from __future__ import annotations

import pytest

from indexer import cli
from indexer.settings import FIELDS


def help_of(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    return capsys.readouterr().out


def test_each_command_lists_only_the_settings_it_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    every = {"--" + f.name.replace("_", "-") for f in FIELDS}
    for command, names in cli.USES.items():
        action = {"cache": "stats", "sources": "list", "documents": "add", "models": "add"}.get(
            command
        )
        argv = [command] if action is None else [command, action]
        text = help_of(argv, capsys)
        shown = {option for option in every if f"{option} " in text}
        assert shown == {"--" + n.replace("_", "-") for n in names}, command
    assert "--batch-size" not in help_of(["dsn"], capsys)
    assert "--model-dir" in help_of(["embed"], capsys)
    assert "--database-url" not in help_of(["embed"], capsys)


def test_an_option_is_named_as_typed_and_a_variable_as_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["status", "--schema", "bad name"]) == 1
    assert capsys.readouterr().err.startswith("indexer: error: --schema='bad name'")
    monkeypatch.setenv("INDEXER_BATCH_SIZE", "0")
    assert cli.main(["run", "--once"]) == 1
    assert (
        capsys.readouterr().err.strip() == "indexer: error: INDEXER_BATCH_SIZE must be at least 1"
    )
    assert cli.main(["run", "--once", "--batch-size", "0"]) == 1
    assert capsys.readouterr().err.strip() == "indexer: error: --batch-size must be at least 1"
    monkeypatch.delenv("INDEXER_BATCH_SIZE")
    monkeypatch.setenv("INDEXER_HTTP", "abc")
    assert cli.main(["run"]) == 1
    assert capsys.readouterr().err.startswith("indexer: error: INDEXER_HTTP='abc' is not")
    assert cli.main(["run", "--http", "abc"]) == 1
    assert capsys.readouterr().err.startswith("indexer: error: --http 'abc' is not")
