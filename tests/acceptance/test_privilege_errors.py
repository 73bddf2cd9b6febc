"""A role that lacks a privilege gets one line naming it and what to run or ask for, never
a traceback: `indexer migrate` without pgvector, without CREATE on the database or on the
schema, and the commands of a role that may only search.  Real roles, created here
(roles are the server's: a fresh name each time, dropped at the end)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from indexer.db import migrate

from ..helpers import cli_env, run_cli


@contextlib.contextmanager
def role(database: str) -> Iterator[tuple[str, str, psycopg.Connection[tuple[object, ...]]]]:
    """A LOGIN role, its DSN, and a superuser's connection to ``database``."""
    name = "u_" + uuid.uuid4().hex[:12]
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        try:
            yield name, make_conninfo(database, user=name), admin
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("indexer: error: ")
    return lines[0]


def dbname(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


def test_migrate_without_pgvector_says_to_create_the_extension(
    empty_database: str, model_cache: Path
) -> None:
    with role(empty_database) as (name, dsn, admin):
        admin.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(dbname(empty_database)), sql.Identifier(name)
            )
        )
        env = cli_env(dsn, model_cache, INDEXER_SCHEMA="ix")
        line = one_line_error(run_cli(["migrate"], env))
        assert line == (
            f"indexer: error: role {name} may not create the pgvector extension in database "
            f"'{dbname(empty_database)}' (only a superuser may): ask an administrator to run "
            "CREATE EXTENSION vector; in that database, then run `indexer migrate` again"
        )
        admin.execute("CREATE EXTENSION vector")
        done = run_cli(["migrate"], env)
        assert done.returncode == 0, done.stderr


def test_migrate_needs_create_on_the_database_only_for_a_schema_that_is_not_there(
    empty_database: str, model_cache: Path
) -> None:
    database = dbname(empty_database)
    with role(empty_database) as (name, dsn, admin):
        admin.execute("CREATE EXTENSION vector")
        env = cli_env(dsn, model_cache, INDEXER_SCHEMA="ix")
        line = one_line_error(run_cli(["migrate"], env))
        assert line == (
            f"indexer: error: role {name} may not create schema 'ix' (it needs CREATE on "
            f"database '{database}'): ask an administrator to run GRANT CREATE ON DATABASE "
            f"{database} TO {name}; or to create the schema for it: CREATE SCHEMA ix "
            f"AUTHORIZATION {name};"
        )
        # What a DBA does for the indexer's role: a schema of its own, nothing on the
        # database.
        admin.execute(sql.SQL("CREATE SCHEMA ix AUTHORIZATION {}").format(sql.Identifier(name)))
        done = run_cli(["migrate"], env)
        assert done.returncode == 0, done.stderr
        head = migrate.head_revision()
        assert done.stdout == f"schema 'ix' upgraded from nothing to {head}\n"
        again = run_cli(["migrate"], env)
        assert again.stdout == f"schema 'ix' is already at revision {head}\n", again.stderr
        assert run_cli(["status"], env).returncode == 0
        # Another role, the tables' owner being no superuser: it may become its member.
        with role(empty_database) as (other, other_dsn, _):
            admin.execute(sql.SQL("GRANT USAGE ON SCHEMA ix TO {}").format(sql.Identifier(other)))
            other_env = cli_env(other_dsn, model_cache, INDEXER_SCHEMA="ix")
            with psycopg.connect(dsn, autocommit=True) as owner:
                owner.execute("SELECT ix.grant_search(%s)", (other,))
            line = one_line_error(run_cli(["events", "prune"], other_env))
            assert line.endswith(
                f"only role {name}, which owns the indexer's tables, may; run the command as "
                f"{name}, or ask an administrator to run GRANT {name} TO {other};"
            )

        version = admin.execute("SHOW server_version_num").fetchone()
        assert version is not None
        if int(str(version[0])) >= 150000:  # before 15, PUBLIC may create in public
            line = one_line_error(run_cli(["migrate"], cli_env(dsn, model_cache)))
            assert line == (
                f"indexer: error: role {name} may not create tables in schema 'public': ask "
                f"an administrator to run GRANT CREATE ON SCHEMA public TO {name}; or give "
                f"the indexer a schema of its own (CREATE SCHEMA ix AUTHORIZATION {name}; "
                "and INDEXER_SCHEMA=ix)"
            )


def test_migrate_as_another_role_than_the_owner_names_the_owner(
    database: str, model_cache: Path
) -> None:
    with role(database) as (name, dsn, admin):
        admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        migrate.downgrade(database, "public", "0006")
        owner = admin.info.user
        line = one_line_error(run_cli(["migrate"], cli_env(dsn, model_cache)))
        # The owner is the test's superuser: no role is told to become a member of it.
        assert line == (
            f"indexer: error: role {name} may not upgrade the indexer's tables in schema "
            f"'public': they belong to role {owner}; run `indexer migrate` as {owner}"
        )


@pytest.mark.parametrize(
    ("command", "doing", "need"),
    [
        (["run", "--once"], None, None),
        (["documents", "add", "--text", "a text"], "add documents", "write"),
        (["retry", "--failed"], "re-queue failed rows", "write"),
        (["retry", "--source", "documents"], "re-queue failed documents", "write"),
        (["cache", "purge", "--all"], "purge the vector cache", "owner"),
        (["cache", "prune"], "prune the vector cache", "owner"),
        (["events", "prune"], "prune events", "owner"),
    ],
)
def test_a_role_that_may_only_search_is_told_what_to_grant(
    command: list[str], doing: str | None, need: str | None, database: str, model_cache: Path
) -> None:
    with role(database) as (name, dsn, admin):
        admin.execute("SELECT grant_search(%s)", (name,))
        owner = admin.info.user
        line = one_line_error(run_cli(command, cli_env(dsn, model_cache)))
        if doing is None:
            assert line == (
                f"indexer: error: role {name} may not run the daemon: it writes every table "
                f"of the indexer in schema 'public', which belong to role {owner}; run "
                f"`indexer run` as {owner}"
            )
        elif need == "write":
            assert line.startswith(f"indexer: error: role {name} may not {doing} (")
            assert line.endswith(
                f"): ask the owner of the indexer's tables (role {owner}) to run "
                f"SELECT public.grant_write('{name}');"
            )
            admin.execute("SELECT grant_write(%s)", (name,))
            granted = run_cli(command, cli_env(dsn, model_cache))
            assert granted.returncode == 0, granted.stderr
        else:
            assert line.startswith(f"indexer: error: role {name} may not {doing} (")
            assert line.endswith(
                f"): only role {owner}, which owns the indexer's tables, may; run the "
                f"command as {owner}"
            )
