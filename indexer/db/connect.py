"""The database boundary: where to connect, how, and what a driver error means.

Every connection the indexer opens comes from :func:`connect`: the configured schema
first on its search_path, pgvector's types registered, rows as dicts.  Driver errors
that mean "the database is not there" become :class:`DatabaseUnavailable` (an outage,
which the daemon waits out); a server that answers and refuses the login is a
:class:`DatabaseRefused` (see :func:`refusal`), a DSN libpq cannot parse a
:class:`ConfigurationError`, and a password never reaches a message.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.rows import DictRow, dict_row, tuple_row

from indexer.db import server
from indexer.exceptions import (
    ConfigurationError,
    DatabaseRefused,
    DatabaseUnavailable,
    ExtensionMissing,
    IndexerError,
    first_line,
)
from indexer.settings import Settings

Connection = psycopg.Connection[DictRow]

MIN_PGVECTOR = (0, 7)
APPLICATION_NAME = "indexer"
#: Seconds to wait for the server to accept a new connection.
CONNECT_TIMEOUT = 10

# Errors after which the same statement may work once the server is back.  (Opening a
# connection, an OperationalError may also be the server's final "no": see refusal().)
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.errors.AdminShutdown,
    psycopg.errors.CannotConnectNow,
    psycopg.errors.CrashShutdown,
)


def resolve_dsn(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server's DSN (starting it if needed).

    A malformed DATABASE_URL is a ConfigurationError here, before any command tries it,
    so that the daemon refuses it at once instead of waiting it out like an outage.
    """
    if settings.database_url:
        return check_dsn(settings.database_url)
    return server.start(settings.data_dir)


# key=value form (also a URL's ?password=): the value, quoted or not.  An unquoted one
# runs on to the next "key=", so that a password with a stray space is hidden whole.
_KEYWORD_PASSWORD = re.compile(
    r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:\S|\s(?!\s*[\w.-]+\s*=))+)", re.IGNORECASE
)
# A URL's scheme, counted only with a slash: in "app:secret@host" "app:" is the user.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+")


def redact(dsn: str) -> str:
    """The DSN without its password, for messages; malformed ones too, since those are
    the ones an error message shows."""
    dsn = _KEYWORD_PASSWORD.sub(r"\1***", dsn)
    # URL user info: the password runs from the user's ":" to the last "@" (generous
    # where a password holds an unescaped "@", or a query does).
    at = dsn.rfind("@")
    scheme = _SCHEME.match(dsn)
    colon = dsn.find(":", scheme.end() if scheme else 0, max(at, 0))
    if colon < 0 or colon + 1 == at:
        return dsn
    return f"{dsn[: colon + 1]}***{dsn[at:]}"


def check_dsn(dsn: str) -> str:
    """``dsn`` if libpq can parse it; else ConfigurationError."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise invalid_dsn(dsn) from None
    return dsn


def invalid_dsn(dsn: str) -> ConfigurationError:
    """The error for a DSN libpq cannot parse, without its password.

    libpq's reason quotes the part it could not parse, which may hold the password, so
    the reason shown is the one for the redacted DSN (raise it ``from None``: the
    driver's error would carry the password along).
    """
    shown = redact(dsn)
    try:
        psycopg.conninfo.conninfo_to_dict(shown)
    except psycopg.ProgrammingError as exc:
        reason = first_line(exc)
    else:  # only the hidden part was wrong
        reason = (
            "cannot parse the password: quote it (password='...') or, in a URL, percent-encode it"
        )
    where = "" if shown and shown in reason else f" {shown}"
    return ConfigurationError(f"invalid database URL{where}: {reason}")


#: SQLSTATEs of a server that answered and will not let this login in, however long one
#: waits: invalid_password (28P01); invalid_authorization_specification (28000: no such
#: role, a role that may not log in, no pg_hba.conf line for it, a failed peer, ident,
#: LDAP... check); invalid_catalog_name (3D000: no such database).
REFUSALS = frozenset({"28P01", "28000", "3D000"})

# What the server says with those SQLSTATEs, as libpq quotes it: after "failed: ", its
# severity and two spaces.  Needed because libpq keeps the SQLSTATE of a failed
# connection to itself: psycopg's error for it has sqlstate None, whatever the cause.
_REFUSAL_WORDS = re.compile(
    r"FATAL:  (?:"
    r'.*authentication failed for user "'  # password (28P01), peer, ident, LDAP... (28000)
    r'|role ".*" does not exist'
    r'|role ".*" is not permitted to log in'
    r"|no pg_hba\.conf entry for "
    r"|pg_hba\.conf rejects connection for "
    r'|database ".*" does not exist'  # 3D000
    r")"
)


def refusal(exc: psycopg.Error) -> str | None:
    """The server's reason when ``exc`` (opening a connection) is its refusal of the
    login, which waiting does not change; None for an outage, which it may.

    A refusal: the SQLSTATE is one of REFUSALS; or libpq found no password to give a
    server that asked for one; or the message holds the server's own words for one of
    REFUSALS.  An outage: no server answered (no socket, connection refused, a timeout,
    a connection cut), or it answered that it cannot take connections now (starting up,
    shutting down, in recovery, too many clients).  libpq's own messages (the first
    kind) never hold the server's "FATAL:  " words, and the second kind's words differ
    from a refusal's, so neither is taken for one.  A server whose messages are
    translated (lc_messages) words a refusal differently: nothing matches, and it is
    waited out as before, never the reverse.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines()] or [type(exc).__name__]
    if exc.sqlstate in REFUSALS:
        return lines[0]
    if not isinstance(exc, psycopg.OperationalError):
        return None
    if exc.pgconn is not None and exc.pgconn.needs_password:
        return lines[0]
    # With several addresses (a name that resolves to IPv6 and IPv4, several hosts) the
    # message has a line per attempt: one server's refusal decides.
    return next((line for line in lines if _REFUSAL_WORDS.search(line)), None)


@contextlib.contextmanager
def connect_errors(dsn: str) -> Iterator[None]:
    """Driver errors of opening a connection to ``dsn``, as the user's one line."""
    try:
        yield
    except psycopg.Error as exc:
        reason = refusal(exc)
        if reason is not None:
            raise DatabaseRefused(
                f"cannot connect to PostgreSQL at {redact(dsn)}: {reason}"
            ) from exc
        if isinstance(exc, psycopg.OperationalError):
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {redact(dsn)}: {first_line(exc)}"
            ) from exc
        if isinstance(exc, psycopg.ProgrammingError):
            raise invalid_dsn(dsn) from None
        raise


def connect(
    dsn: str,
    schema: str,
    *,
    autocommit: bool = False,
    vector: bool = True,
    timeout: int = CONNECT_TIMEOUT,
) -> Connection:
    """Open a connection; raise DatabaseUnavailable, DatabaseRefused, ConfigurationError
    (a malformed DSN) or ExtensionMissing with a clear line."""
    with connect_errors(dsn):
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=timeout,
            application_name=APPLICATION_NAME,
        )
    try:
        # The server may go away between the handshake and these first statements
        # (a restart): that is an outage too, not a crash.
        with wrap_errors("preparing a new connection"):
            set_session(conn, schema)
            if vector:
                register(conn)
            conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn


def set_session(conn: psycopg.Connection[Any], schema: str) -> None:
    """The session the indexer's statements are written for: its search_path (the
    indexer's schema, then public, then the schema pgvector is installed in if it is
    another: a database where an early `indexer migrate` of another schema put it), and
    READ COMMITTED whatever the database's default_transaction_isolation (the daemon's
    statements wait for, skip or re-read rows other transactions hold, as READ
    COMMITTED lets them)."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'vector'"
        ).fetchone()
    schemas = [schema, "public"]
    if row is not None and row[0] not in schemas:
        schemas.append(str(row[0]))
    path = sql.SQL(", ").join(sql.Identifier(s) for s in schemas).as_string(conn)
    conn.execute(
        "SELECT set_config('search_path', %s, false),"
        " set_config('default_transaction_isolation', 'read committed', false)",
        (path,),
    )


def _installed_pgvector(conn: psycopg.Connection[Any]) -> str | None:
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
    return None if row is None else str(row[0])


def register(conn: Connection) -> tuple[int, ...]:
    """Check pgvector (installed, enabled, recent enough), register its types, and
    return its version."""
    version = _installed_pgvector(conn)
    if version is None:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        if available is None:
            raise ExtensionMissing(
                "the pgvector extension is not installed on this PostgreSQL server "
                "(install pgvector 0.7 or newer, e.g. the pgvector/pgvector image)"
            )
        raise ExtensionMissing(
            "the pgvector extension is not enabled in this database: run `indexer migrate`"
        )
    check_pgvector_version(version)
    register_vector(conn)
    return parse_version(version)


def parse_version(version: str) -> tuple[int, ...]:
    """'0.8.5' -> (0, 8, 5); tolerant of suffixes such as '0.7.0-dev'."""
    return tuple(int(p) for p in re.findall(r"\d+", version))


def check_pgvector_version(version: str) -> None:
    if parse_version(version)[:2] < MIN_PGVECTOR:
        raise ExtensionMissing(
            f"pgvector {version} is too old: 0.7 or newer is required "
            "(ALTER EXTENSION vector UPDATE after upgrading pgvector)"
        )


@contextlib.contextmanager
def wrap_errors(what: str) -> Iterator[None]:
    """Turn connection-level driver errors into DatabaseUnavailable."""
    try:
        yield
    except (IndexerError, psycopg.errors.LockNotAvailable):
        # A lock timeout is the statement's (its caller retries or gives up), not an outage.
        raise
    except TRANSIENT_ERRORS as exc:
        raise DatabaseUnavailable(f"lost the database while {what}: {first_line(exc)}") from exc


def quote_name(name: str) -> str:
    """A name as SQL writes an identifier in a message a user copies: bare when it may be,
    quoted (and its quotes doubled) when it must be."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'
