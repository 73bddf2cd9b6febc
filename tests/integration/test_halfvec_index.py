"""A halfvec model's HNSW index is built with m 13 and ef_construction 100, a vector
model's with m 16 and ef_construction 64 (migration 0012): at once by add_model and
after the fill by a daemon; the options are the owner's function alone; the bench
measures the options the indexer builds with; the downgrade gives 0011's add_model
back."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from indexer.bench.halfvec import INDEX_OPTIONS
from indexer.db import migrate
from indexer.db.connect import Connection
from indexer.settings import Settings
from indexer.store import Store
from indexer.worker.indexes import IndexBuilder

from .test_privileges import as_role, role


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    with Store(settings.database_url or "", settings.schema) as s:
        yield s


def _add(store: Store, name: str, *, halfvec: bool, deferred: bool) -> int:
    """A 3-d model; its index left to a daemon (due at once: no chunk to fill) or made now."""
    return store.add_model(
        name,
        dimension=3,
        record={},
        fingerprint="fp-" + name,
        halfvec=halfvec,
        defer_index_at=0 if deferred else 1_000_000,
    )


def _options(conn: Connection, model_id: int, schema: str = "public") -> list[str] | None:
    """The reloptions of the model's valid HNSW index; None when it has none."""
    row = conn.execute(
        "SELECT c.reloptions FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary AND i.indisvalid",
        (f"{schema}.model_{model_id}_vectors",),
    ).fetchone()
    return None if row is None else list(row["reloptions"])


HALFVEC = ["m=13", "ef_construction=100"]
VECTOR = ["m=16", "ef_construction=64"]


def test_each_type_gets_its_options_at_once_and_after_the_fill(
    store: Store, conn: Connection
) -> None:
    now = {
        t: _add(store, f"{t}-now", halfvec=t == "halfvec", deferred=False) for t in INDEX_OPTIONS
    }
    later = {
        t: _add(store, f"{t}-later", halfvec=t == "halfvec", deferred=True) for t in INDEX_OPTIONS
    }
    assert all(_options(conn, i) is None for i in later.values())
    assert IndexBuilder(store).build_due() == 2
    for models in (now, later):
        assert _options(conn, models["halfvec"]) == HALFVEC
        assert _options(conn, models["vector"]) == VECTOR


def test_the_bench_measures_the_options_the_indexer_builds_with(conn: Connection) -> None:
    for type_name, options in INDEX_OPTIONS.items():
        row = conn.execute(
            "SELECT m, ef_construction FROM model_index_options(%s)", (type_name == "halfvec",)
        ).fetchone()
        assert row is not None and (row["m"], row["ef_construction"]) == options


def test_the_options_are_the_owners_function_alone(conn: Connection, database: str) -> None:
    signature = "model_index_options(boolean)"
    row = conn.execute(
        "SELECT has_function_privilege('public', %s, 'EXECUTE') AS granted", (signature,)
    ).fetchone()
    assert row is not None and row["granted"] is False
    for grant in (None, "grant_search", "grant_write"):
        with role(conn, database) as (name, dsn):
            if grant is not None:
                conn.execute(
                    psycopg.sql.SQL("SELECT {}(%s)").format(psycopg.sql.Identifier(grant)), (name,)
                )
            with as_role(dsn) as attacker, pytest.raises(psycopg.errors.InsufficientPrivilege):
                attacker.execute("SELECT * FROM model_index_options(true)")


def test_the_downgrade_gives_0011s_add_model_back(
    store: Store, conn: Connection, database: str
) -> None:
    halfvec = _add(store, "halfvec-0012", halfvec=True, deferred=False)
    store.close()
    migrate.downgrade(database, "public", "0011")
    assert conn.execute(
        "SELECT to_regprocedure('model_index_options(boolean)') AS f"
    ).fetchone() == {"f": None}
    with Store(database, "public", check=False) as old:
        before = _add(old, "halfvec-0011", halfvec=True, deferred=False)
    # Indexes keep the options they were built with.
    assert _options(conn, halfvec) == HALFVEC and _options(conn, before) == VECTOR
    migrate.upgrade(database, "public")
    with Store(database, "public") as new:
        assert _options(conn, _add(new, "halfvec-again", halfvec=True, deferred=False)) == HALFVEC


def test_the_documented_rebuild_of_an_older_halfvec_index(store: Store, conn: Connection) -> None:
    """docs/how-to/upgrading.md (0012): an index built with 0011's options is rebuilt
    with 0012's, and the model's index is ready at every step."""
    model_id = _add(store, "old-halfvec", halfvec=True, deferred=False)
    table, index = f"model_{model_id}_vectors", f"model_{model_id}_vectors_embedding_idx"
    conn.execute(f"DROP INDEX {index}")
    conn.execute(
        f"CREATE INDEX {index} ON {table} USING hnsw (embedding halfvec_cosine_ops)"
        " WITH (m = 16, ef_construction = 64)"
    )
    assert _options(conn, model_id) == VECTOR

    def ready() -> bool:
        row = conn.execute("SELECT model_index(%s) AS state", (model_id,)).fetchone()
        return row is not None and row["state"] == "ready"

    conn.execute(
        f"CREATE INDEX CONCURRENTLY {index[:-4]}_new ON {table} USING hnsw"
        " (embedding halfvec_cosine_ops) WITH (m = 13, ef_construction = 100)"
    )
    assert ready()
    with conn.transaction():
        conn.execute(f"ALTER INDEX {index} RENAME TO {index[:-4]}_old")
        conn.execute(f"ALTER INDEX {index[:-4]}_new RENAME TO {index}")
    assert ready()
    conn.execute(f"DROP INDEX CONCURRENTLY {index[:-4]}_old")
    assert ready() and _options(conn, model_id) == HALFVEC
