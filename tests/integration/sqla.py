"""SQLAlchemy engines on the test databases (psycopg 3 driver)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.pool import NullPool


def sqlalchemy_url(dsn: str, driver: str = "postgresql+psycopg") -> URL:
    """The URL SQLAlchemy needs for a libpq DSN (key=value or URL form)."""
    info: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(dsn)
    known = {"user", "password", "host", "port", "dbname"}
    port = info.get("port")
    return URL.create(
        driver,
        username=info.get("user"),
        password=info.get("password"),
        # A unix socket directory goes in the query (libpq's host=), not the netloc.
        host=None if str(info.get("host", "")).startswith("/") else info.get("host"),
        port=int(port) if port else None,
        database=info.get("dbname"),
        query={
            **({"host": str(info["host"])} if str(info.get("host", "")).startswith("/") else {}),
            **{k: str(v) for k, v in info.items() if k not in known},
        },
    )


@contextlib.contextmanager
def engine_for(dsn: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(dsn), poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
