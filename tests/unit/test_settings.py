"""Settings from the environment and the command line, and their one-line errors."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from indexer.exceptions import ConfigurationError
from indexer.settings import FIELDS, Settings, env_name, libpq_url, unknown_variables


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None and settings.uses_embedded_server
    assert (settings.batch_size, settings.claim_size, settings.token_budget) == (64, 256, 2048)


def test_environment_values_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/x",
            "INDEXER_BATCH_SIZE": "8",
            "INDEXER_LEASE_SECONDS": "2.5",
            "INDEXER_MODEL_CACHE": "~/models",
            "INDEXER_SCHEMA": "",  # empty means unset
        }
    )
    assert settings.database_url == "postgresql://db/x" and not settings.uses_embedded_server
    assert settings.batch_size == 8 and settings.lease_seconds == 2.5
    assert settings.model_cache == Path("~/models").expanduser()
    assert settings.schema == "public"


def test_an_override_wins_over_the_environment_and_none_means_unset() -> None:
    settings = Settings.from_env({"INDEXER_BATCH_SIZE": "8"}, batch_size=16, claim_size=None)
    assert settings.batch_size == 16 and settings.claim_size == 256


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("INDEXER_BATCH_SIZE", "many", "INDEXER_BATCH_SIZE='many' is not a number"),
        ("INDEXER_BATCH_SIZE", "0", "INDEXER_BATCH_SIZE must be at least 1"),
        ("INDEXER_POLL_INTERVAL", "0", "INDEXER_POLL_INTERVAL must be greater than 0"),
        ("INDEXER_SCHEMA", "a b", "is not a plain SQL identifier"),
        ("INDEXER_SCHEMA", "name\n", "is not a plain SQL identifier"),
        ("INDEXER_SCHEMA", "pg_catalog", "is a PostgreSQL system schema"),
        ("INDEXER_SCHEMA", "pg_temp", "is a PostgreSQL system schema"),
        ("INDEXER_SCHEMA", "pg_toast", "is a PostgreSQL system schema"),
        ("INDEXER_SCHEMA", "pg_mine", "is a PostgreSQL system schema"),
        ("INDEXER_SCHEMA", "information_schema", "is a PostgreSQL system schema"),
        ("INDEXER_MODEL_VARIANT", "fp16", "must be 'fp32' or 'int8'"),
        ("INDEXER_LOG_FORMAT", "xml", "must be 'text' or 'json'"),
        ("INDEXER_THREADS", "-1", "INDEXER_THREADS must be 0 (auto) or more"),
        ("INDEXER_CHUNK_MAX_CHARS", "15", "INDEXER_CHUNK_MAX_CHARS must be at least 16"),
        ("INDEXER_CHUNK_MAX_CHARS", "8k", "INDEXER_CHUNK_MAX_CHARS='8k' is not a number"),
        ("INDEXER_INDEX_BUILD_MEMORY", "lots", "must be an amount of memory as PostgreSQL"),
        ("INDEXER_INDEX_BUILD_MEMORY", "1 GB", "(64MB, 1GB...), not '1 GB'"),
    ],
)
def test_bad_values_are_one_clear_line(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        Settings.from_env({variable: value})
    assert "\n" not in str(caught.value)


def test_every_field_has_help_and_a_variable() -> None:
    assert all(f.metadata.get("help") for f in FIELDS)
    names = [env_name(f.name) for f in FIELDS]
    assert len(set(names)) == len(names)
    assert all(n.startswith("INDEXER_") for n in names if n != "DATABASE_URL")


def test_no_test_hook_is_a_setting() -> None:
    assert not [f.name for f in FIELDS if "test" in f.name or "fail" in f.name]


def test_no_test_hook_in_any_commands_help() -> None:
    from indexer.cli import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in action.choices.items():
        text = sub.format_help().lower()
        assert "test" not in text.replace("latest", ""), name
        assert "fail-marker" not in text, name


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://app:s@db/app", "postgresql://app:s@db/app"),
        (
            "postgresql+psycopg2://app@db/app?sslmode=require",
            "postgresql://app@db/app?sslmode=require",
        ),
        ("postgres+psycopg://app@/app?host=/run", "postgres://app@/app?host=/run"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("host=db dbname=app+psycopg", "host=db dbname=app+psycopg"),
    ],
)
def test_a_sqlalchemy_url_is_read_as_libpq_reads_it(url: str, expected: str) -> None:
    assert libpq_url(url) == expected
    assert Settings.from_env({"DATABASE_URL": url}).database_url == expected


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("INDEXER_CHUNK_SIZE", "INDEXER_CHUNK_TOKENS"),
        ("INDEXER_BATCHSIZE", "INDEXER_BATCH_SIZE"),
        ("INDEXER_SCHEME", "INDEXER_SCHEMA"),
        ("INDEXER_DATABASE_URL", "DATABASE_URL"),
        ("INDEXER_HTTP_TOKENS", "INDEXER_HTTP_TOKEN"),
    ],
)
def test_a_misspelled_variable_is_one_warning_naming_the_closest(
    variable: str, closest: str
) -> None:
    lines = unknown_variables({variable: "64", "INDEXER_BATCH_SIZE": "8", "PATH": "/bin"})
    assert lines == [
        f"{variable} is not a setting of the indexer: it is ignored; did you mean {closest}?"
    ]


def test_settings_the_test_hooks_and_unrelated_names_warn_of_nothing_or_name_nothing() -> None:
    known = {env_name(f.name): "1" for f in FIELDS}
    assert unknown_variables({**known, "INDEXER_HTTP": "x", "INDEXER_TEST_FAIL_MARKER": "x"}) == []
    assert unknown_variables({"INDEXER_FOO": "1"}) == [
        "INDEXER_FOO is not a setting of the indexer: it is ignored"
    ]
