"""Connection strings: a password never reaches a message, a malformed one is refused early."""

from __future__ import annotations

import pytest

from indexer.db.connect import connect, redact, resolve_dsn
from indexer.exceptions import ConfigurationError
from indexer.settings import Settings

# Each form hides "secret"; the rest of the string stays readable.
REDACTED = {
    "postgresql://app:secret@host/db": "postgresql://app:***@host/db",
    "postgres://app:secret@host:5432/db?sslmode=require": (
        "postgres://app:***@host:5432/db?sslmode=require"
    ),
    "postgresql://app:se:cr@et@host/db": "postgresql://app:***@host/db",
    "postgresql://app:secret@[::1]:5432/db": "postgresql://app:***@[::1]:5432/db",
    "postgres//app:secret@host/db": "postgres//app:***@host/db",
    "postgresql:/app:secret@host": "postgresql:/app:***@host",
    "postgresql://app:secret@": "postgresql://app:***@",
    "postgresql:app:secret@host": "postgresql:***@host",
    "app:secret@host/db": "app:***@host/db",
    "postgresql://app:se cret@host/db": "postgresql://app:***@host/db",
    "postgresql://host/db?password=secret": "postgresql://host/db?password=***",
    "host=x password=secret user=app": "host=x password=*** user=app",
    "host=x password = secret user=app": "host=x password = *** user=app",
    "password='se cret' host=x": "password=*** host=x",
    r"password='it\'s secret' host=x": "password=*** host=x",
    "host=x password='secret": "host=x password=***",
    "host=x password=se cret": "host=x password=***",
    "host=x PASSWORD=secret": "host=x PASSWORD=***",
}

# Nothing to hide: unchanged.
UNCHANGED = [
    "postgresql://app@host/db",
    "postgresql://host:5432/db",
    "postgresql://postgres:@/indexer?host=/tmp/pg",
    "postgresql://app@[::1]:5432/db",
    "host=x user=app dbname=db",
    "",
]

MALFORMED = [
    "postgres//app:secret@host/db",
    "postgresql:/app:secret@host",
    "host=x password=se cret",
    "host=x password='secret",
    "postgresql://app:secret@host/db?sslmode",
    "postgresql://app:secret@host/db?sslmod=require",
    "postgresql://app:secret@[::1/db",
    "user=app password=secret secret",
]


@pytest.mark.parametrize(("dsn", "expected"), REDACTED.items())
def test_redact_hides_the_password(dsn: str, expected: str) -> None:
    assert redact(dsn) == expected
    assert "secret" not in redact(dsn)
    assert "cret" not in redact(dsn)


@pytest.mark.parametrize("dsn", UNCHANGED)
def test_redact_leaves_a_dsn_without_password_alone(dsn: str) -> None:
    assert redact(dsn) == dsn


@pytest.mark.parametrize("dsn", MALFORMED)
def test_resolve_dsn_refuses_a_malformed_url_without_its_password(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        resolve_dsn(Settings.from_env({}, database_url=dsn))
    message = str(err.value)
    assert message.startswith("invalid database URL")
    assert "secret" not in message
    assert "\n" not in message
    assert err.value.__cause__ is None  # the driver's message quotes the password


def test_resolve_dsn_keeps_a_valid_url() -> None:
    dsn = "postgresql://app:secret@host/db"
    assert resolve_dsn(Settings.from_env({}, database_url=dsn)) == dsn


@pytest.mark.parametrize("dsn", MALFORMED)
def test_connect_calls_a_malformed_url_a_configuration_error(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        connect(dsn, "public")
    assert "secret" not in str(err.value)
