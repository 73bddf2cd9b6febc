"""Alembic environment.

`indexer migrate` (indexer.migrate) passes an open SQLAlchemy connection whose
search_path already starts with the configured schema.  Run by hand
(`alembic upgrade head` from a checkout) it builds one from the same settings.
"""

from __future__ import annotations

from alembic import context

from indexer.db.migrate import connect_for_alembic
from indexer.models import Base

config = context.config
connection = config.attributes.get("connection")
schema: str = config.attributes.get("schema", "public")


def _ours(obj: object, name: str | None, kind: str, reflected: bool, compare_to: object) -> bool:
    """`alembic check` compares the indexer's tables only, never an application's own
    tables that share the schema."""
    return not (kind == "table" and reflected and name not in Base.metadata.tables)


def run(conn: object) -> None:
    context.configure(
        connection=conn,  # type: ignore[arg-type]
        version_table_schema=schema,
        transaction_per_migration=True,
        # The models (indexer.models), so that `alembic check` says whether they and the
        # migrations agree; upgrades do not use them.
        target_metadata=Base.metadata,
        include_object=_ours,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
if connection is not None:
    run(connection)
else:
    with connect_for_alembic() as (conn, schema):
        run(conn)
