"""What a role that lacks a privilege is told: what it may not do, and what to run or
ask for (grant_search, grant_write, or to act as the role that owns the tables)."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.rows import DictRow

from indexer.db import connect as db
from indexer.db.connect import quote_name
from indexer.exceptions import InsufficientPrivilege, first_line

#: What a named query does, in the words of the message a missing privilege gets, and
#: who may: "search" and "write" (what grant_search and grant_write give a role),
#: "owner" (the role that owns the indexer's tables; the default); "source": a source's
#: table is read, and its driver error is that source's (see DocumentQueries).
DOING: dict[str, tuple[str, str]] = {
    "insert_chunks": ("add rows", "write"),
    "insert_documents": ("add documents", "write"),
    "retry_failed": ("re-queue failed rows", "write"),
    "retry_documents": ("re-queue failed documents", "write"),
    "retry_document_keys": ("re-queue failed documents", "owner"),
    "search_coverage": ("search", "search"),
    "prune_events": ("prune events", "owner"),
    "prune_cache_age": ("prune the vector cache", "owner"),
    "prune_cache_size": ("prune the vector cache", "owner"),
    "cache_purge": ("purge the vector cache", "owner"),
    "cache_clear": ("purge the vector cache", "owner"),
    "cache_stats": ("read the vector cache's statistics", "owner"),
    "status": ("read the status", "owner"),
    "queue_status": ("read the backlog", "owner"),
    "failed_rows": ("read the failed rows", "owner"),
    "failed_documents": ("read the failed documents", "owner"),
    "source_status": ("read the sources' status", "owner"),
    "source_queue_status": ("read the sources' status", "owner"),
    "insert_event": ("write events (the daemon's work)", "owner"),
    "add_source": ("add a source", "owner"),
    "detach_source": ("remove a source", "owner"),
    "remove_source": ("remove a source", "owner"),
    "source_texts": ("read a source's table", "source"),
    "backfill_source": ("back-fill a source", "source"),
    "throughput": ("read the events", "owner"),
    "passage_context": ("read a source's table", "source"),
    "models": ("read the models", "search"),
    "model_status": ("read the models' status", "owner"),
    "model_queue_status": ("read the models' status", "owner"),
    "add_model": ("add a model", "owner"),
    "activate_model": ("activate a model", "owner"),
    "drop_model": ("drop a model", "owner"),
    "recut_documents": ("cut the documents again", "owner"),
}


def or_member(owner: DictRow) -> str:
    """How a role gets the rights of the indexer's owner besides logging in as it: made
    a member of it; never said of a superuser (its members could act as it on every
    object it owns)."""
    if owner["owner_is_superuser"]:
        return ""
    return (
        f", or ask an administrator to run GRANT {quote_name(owner['owner'])} TO "
        f"{quote_name(owner['role'])};"
    )


def privilege_error(
    conn: db.Connection,
    row: DictRow | None,
    schema: str,
    what: str,
    need: str,
    exc: psycopg.Error,
) -> InsufficientPrivilege:
    """The one line for a privilege this role lacks, with what to run or ask for
    (``row``: the ``indexer_owner`` query's, None when it could not be read)."""
    role = str(row["role"]) if row else (conn.info.user or "this role")
    owner = str(row["owner"]) if row and row["owner"] else None
    line = f"role {role} may not {what} ({first_line(exc)})"
    quoted = quote_name(schema)
    grant = {"search": "grant_search", "write": "grant_write"}.get(need)
    if grant is not None:
        call = f"SELECT {quoted}.{grant}({sql.Literal(role).as_string(conn)});"
        return InsufficientPrivilege(
            f"{line}: ask the owner of the indexer's tables"
            f"{f' (role {owner})' if owner else ''} to run {call}"
        )
    if owner is None:
        return InsufficientPrivilege(
            f"{line}: only the role that owns the indexer's tables (the one that ran "
            "`indexer migrate`) may; run the command as that role"
        )
    assert row is not None
    return InsufficientPrivilege(
        f"{line}: only role {owner}, which owns the indexer's tables, may; run the "
        f"command as {owner}{or_member(row)}"
    )
