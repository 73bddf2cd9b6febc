"""Alembic environment.

`indexer migrate` (indexer.migrate) passes an open SQLAlchemy connection whose
search_path already starts with the configured schema.  Run by hand
(`alembic upgrade head` from a checkout) it builds one from the same settings.
"""

from __future__ import annotations

from alembic import context

from indexer.db.migrate import connect_for_alembic

config = context.config
connection = config.attributes.get("connection")
schema: str = config.attributes.get("schema", "public")


def run(conn: object) -> None:
    context.configure(
        connection=conn,  # type: ignore[arg-type]
        version_table_schema=schema,
        transaction_per_migration=True,
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
