"""Alembic migrations, installed as ``indexer._migrations``."""
