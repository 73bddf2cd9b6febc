"""What a failed connection means: an outage to wait out, or a refusal to report at once.

The real server's answers are in tests/acceptance/test_bad_database_url.py; here, the
classification of every kind of answer, including those a test cannot make a real
server give on demand (starting up, shutting down, too many clients).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from indexer.db.connect import connect_errors, refusal
from indexer.exceptions import DatabaseRefused, DatabaseUnavailable

SOCKET = 'connection failed: connection to server on socket "/run/pg/.s.PGSQL.5432" failed: '
TCP = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
V6 = 'connection failed: connection to server at "::1", port 5432 failed: '


@pytest.mark.parametrize(
    "error",
    [errors.InvalidPassword, errors.InvalidAuthorizationSpecification, errors.InvalidCatalogName],
)
def test_a_refusal_is_known_by_its_sqlstate(error: type[psycopg.Error]) -> None:
    assert refusal(error("whatever its words\nDETAIL:  more")) == "whatever its words"


@pytest.mark.parametrize(
    "error",
    [
        errors.CannotConnectNow,  # starting up, shutting down, in recovery
        errors.TooManyConnections,
        errors.AdminShutdown,
        errors.CrashShutdown,
        errors.ConnectionFailure,
        errors.QueryCanceled,
    ],
)
def test_other_sqlstates_are_not_refusals(error: type[psycopg.Error]) -> None:
    assert refusal(error("the server said so")) is None


# What psycopg raises opening a connection: an OperationalError whose sqlstate is None
# (libpq does not pass the server's on), the server's words after "failed: ".
REFUSED = {
    SOCKET + 'FATAL:  role "x" does not exist': 'role "x" does not exist',
    SOCKET + 'FATAL:  database "no db" does not exist': 'database "no db" does not exist',
    TCP + 'FATAL:  password authentication failed for user "app"': "password authentication",
    SOCKET + 'FATAL:  Peer authentication failed for user "app"': "Peer authentication",
    TCP + 'FATAL:  role "app" is not permitted to log in': "not permitted to log in",
    TCP + 'FATAL:  no pg_hba.conf entry for host "10.0.0.2", user "app", database "db", '
    "no encryption": "no pg_hba.conf entry",
    TCP + 'FATAL:  pg_hba.conf rejects connection for host "10.0.0.2", user "app"': "rejects",
    # A name that resolves to two addresses: one refuses the login, nothing listens on
    # the other (psycopg's first line is the last attempt's).
    V6 + "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
    "connections?\nMultiple connection attempts failed. All failures were:\n"
    "- host: 'localhost', port: None, hostaddr: '127.0.0.1': "
    + TCP
    + 'FATAL:  password authentication failed for user "app"\n'
    "- host: 'localhost', port: None, hostaddr: '::1': "
    + V6
    + "Connection refused": "hostaddr: '127.0.0.1'",
}

WAITED_OUT = [
    'connection is bad: connection to server on socket "/run/pg/.s.PGSQL.5432" failed: '
    "No such file or directory\n\tIs the server running locally and accepting connections "
    "on that socket?",
    TCP + "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
    "connections?",
    TCP + "timeout expired",
    "connection timeout expired",
    TCP + 'could not translate host name "db" to address: Name or service not known',
    TCP + "server closed the connection unexpectedly\n\tThis probably means the server "
    "terminated abnormally\n\tbefore or while processing the request.",
    SOCKET + "FATAL:  the database system is starting up",
    SOCKET + "FATAL:  the database system is shutting down",
    SOCKET + "FATAL:  the database system is not yet accepting connections\n"
    "DETAIL:  Consistent recovery state has not been yet reached.",
    SOCKET + "FATAL:  the database system is in recovery mode",
    TCP + "FATAL:  sorry, too many clients already",
    TCP + "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
    TCP + 'FATAL:  too many connections for role "app"',
    TCP + "FATAL:  terminating connection due to administrator command",
    "couldn't get a connection after 5.00 sec",  # psycopg_pool's PoolTimeout
]


@pytest.mark.parametrize(("message", "shown"), REFUSED.items())
def test_a_refusal_is_known_by_the_servers_words(message: str, shown: str) -> None:
    reason = refusal(psycopg.OperationalError(message))
    assert reason is not None and shown in reason
    assert "\n" not in reason


@pytest.mark.parametrize("message", WAITED_OUT)
def test_no_answer_or_not_now_is_an_outage(message: str) -> None:
    assert refusal(psycopg.OperationalError(message)) is None


def test_connect_errors_names_the_refusal_and_hides_the_password() -> None:
    dsn = "postgresql://app:secret@db/app"
    with pytest.raises(DatabaseRefused) as refused, connect_errors(dsn):
        raise psycopg.OperationalError(
            TCP + 'FATAL:  password authentication failed for user "app"'
        )
    assert str(refused.value) == (
        "cannot connect to PostgreSQL at postgresql://app:***@db/app: "
        + TCP
        + 'FATAL:  password authentication failed for user "app"'
    )
    with pytest.raises(DatabaseUnavailable), connect_errors(dsn):
        raise psycopg.OperationalError(SOCKET + "FATAL:  the database system is starting up")
