"""Sources and documents through the front door: Store and Indexer (add, list, remove,
search_documents, add_documents), every refusal of add_source as one line, and the
HTTP API's ``"group": "document"`` search and per-source metrics.

Document chunks are written here straight into chunks (vectors from the real model),
as the daemon would write them, so these tests need no daemon."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import make_conninfo

from indexer import DocumentHit, Embedder, Indexer, Settings
from indexer.db.connect import Connection
from indexer.exceptions import InvalidInput, SourceError
from indexer.store import Store

from .test_http import Api, serve
from .test_sources_sql import apply_changes


@pytest.fixture
def ix(settings: Settings, embedder: Embedder) -> Iterator[Indexer]:
    with Indexer(settings, embedder=embedder) as indexer:
        yield indexer


def make_notes(conn: Connection, rows: int = 3) -> None:
    conn.execute(
        "CREATE TABLE notes (id bigint PRIMARY KEY, title text, body text, lang text, "
        "extra jsonb, plain json)"
    )
    conn.execute(
        "INSERT INTO notes (id, title, body, lang, extra) "
        "SELECT i, 'title ' || i, 'body ' || i, 'en', '{}' FROM generate_series(1, %s) i",
        (rows,),
    )


def index_document(
    conn: Connection,
    embedder: Embedder,
    source: str,
    key: str,
    passages: list[str],
    metadata: str = "{}",
) -> None:
    """Write a document's chunks as the daemon does: its source_documents row indexed,
    one chunks row per passage with its vector, position and character span."""
    apply_changes(conn)
    row = conn.execute(
        "INSERT INTO source_documents (source_id, doc_key, state, chunk_count) "
        "SELECT id, %s, 'indexed', %s FROM sources WHERE name = %s "
        "ON CONFLICT (source_id, doc_key) DO UPDATE SET state = 'indexed', "
        "chunk_count = excluded.chunk_count RETURNING id, source_id",
        (key, len(passages), source),
    ).fetchone()
    assert row is not None
    vectors = embedder.embed(passages)
    start = 0
    for position, (text, vector) in enumerate(zip(passages, vectors, strict=True)):
        conn.execute(
            "INSERT INTO chunks (content, metadata, embedding, state, document_id, source_id, "
            "doc_key, position, char_start, char_end) "
            "VALUES (%s, %s, %s, 'embedded', %s, %s, %s, %s, %s, %s)",
            (
                text,
                metadata,
                vector,
                row["id"],
                row["source_id"],
                key,
                position,
                start,
                start + len(text),
            ),
        )
        start += len(text) + 1


# -- add, list, remove ----------------------------------------------------------------


def test_add_list_and_remove_a_source(ix: Indexer, conn: Connection) -> None:
    make_notes(conn)
    conn.execute("ANALYZE notes")
    source = ix.add_source("notes", text=["title", "body"], metadata=["lang"])
    assert source["name"] == "public.notes"
    assert source["key_column"] == "id"
    assert source["key_type"] == "bigint"
    assert source["text_columns"] == ["title", "body"]
    assert source["estimated_rows"] == 3
    triggers = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'notes'::regclass ORDER BY 1"
    ).fetchall()
    assert [t["tgname"] for t in triggers] == [
        "indexer_source_delete",
        "indexer_source_insert",
        "indexer_source_truncate",
        "indexer_source_update",
    ]
    rows = {r["source"]: r for r in ix.sources()}
    assert set(rows) == {"documents", "public.notes"}
    assert rows["public.notes"]["backfilled"] is False
    assert rows["documents"]["backfilled"] is True
    # A new row is queued by the trigger.
    conn.execute("INSERT INTO notes (id, title) VALUES (10, 'new')")
    status = {r["source"]: r for r in ix.sources()}["public.notes"]
    assert (status["changes_pending"], status["pending"]) == (1, 0)
    apply_changes(conn)  # as a daemon does first
    status = {r["source"]: r for r in ix.sources()}["public.notes"]
    assert (status["changes_pending"], status["pending"]) == (0, 1)

    conn.execute("UPDATE source_documents SET state = 'indexed', chunk_count = 4")
    assert ix.remove_source("public.notes") == 4
    assert [r["source"] for r in ix.sources()] == ["documents"]
    assert conn.execute(
        "SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = 'notes'::regclass"
        " AND tgname LIKE 'indexer%%'"
    ).fetchone() == {"n": 0}
    assert conn.execute("SELECT count(*) AS n FROM notes").fetchone() == {"n": 4}


def test_a_source_with_its_own_name_and_key(ix: Indexer, conn: Connection) -> None:
    conn.execute("CREATE TABLE pages (id serial PRIMARY KEY, url text NOT NULL UNIQUE, body text)")
    source = ix.add_source("pages", key="url", text=["body"], name="web")
    assert (source["name"], source["key_column"], source["key_type"]) == ("web", "url", "text")
    assert source["estimated_rows"] is None  # never analyzed: unknown
    assert ix.remove_source("web") == 0


@pytest.fixture
def refusals(conn: Connection) -> None:
    make_notes(conn)
    conn.execute("CREATE VIEW notes_view AS SELECT * FROM notes")
    conn.execute("CREATE TABLE no_pk (id bigint, body text)")
    conn.execute("CREATE TABLE two_pk (a int, b int, body text, PRIMARY KEY (a, b))")


@pytest.mark.parametrize(
    ("table", "options", "message"),
    [
        ("missing", {}, 'relation "missing" does not exist'),
        ("notes_view", {}, "public.notes_view is not a table"),
        ("no_pk", {}, "public.no_pk has no primary key: give a unique, NOT NULL key column"),
        ("two_pk", {}, "public.two_pk has a primary key of 2 columns"),
        ("notes", {"key": "lang"}, "key column lang of public.notes is not unique and NOT NULL"),
        ("notes", {"key": "nope"}, "public.notes has no column nope"),
        ("notes", {"text": ["nope"]}, "public.notes has no column nope"),
        ("notes", {"metadata": ["nope"]}, "public.notes has no column nope"),
        ("notes", {"metadata_json": "plain"}, "metadata column plain of public.notes is not jsonb"),
        ("notes", {"text": []}, "a source needs at least one text column"),
        ("documents", {}, "public.documents is already a source"),
    ],
)
def test_add_source_refusals_are_one_line(
    ix: Indexer,
    conn: Connection,
    refusals: None,
    table: str,
    options: dict[str, object],
    message: str,
) -> None:
    kwargs: dict[str, object] = {"text": ["body"], **options}
    with pytest.raises(SourceError) as caught:
        ix.add_source(table, **kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    # Nothing was registered.
    assert [r["source"] for r in ix.sources()] == ["documents"]


def test_add_source_twice_and_remove_unknown(ix: Indexer, conn: Connection) -> None:
    make_notes(conn)
    ix.add_source("notes", text=["body"])
    with pytest.raises(SourceError, match=r"^public\.notes is already a source$"):
        ix.add_source("public.notes", text=["title"])
    with pytest.raises(SourceError, match=r"^no source named nothing$"):
        ix.remove_source("nothing")
    with pytest.raises(SourceError, match=r"^documents is the built-in source"):
        ix.remove_source("documents")


@pytest.fixture
def login_role(database: str, conn: Connection) -> Iterator[str]:
    """A LOGIN role that may use the indexer's tables but not the application's."""
    role = "r_" + uuid.uuid4().hex[:12]
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(
        sql.SQL("GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {}").format(
            sql.Identifier(role)
        )
    )
    conn.execute(
        sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {}").format(
            sql.Identifier(role)
        )
    )
    try:
        yield make_conninfo(database, user=role)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_without_select_or_trigger_is_told_what_to_grant(
    conn: Connection, login_role: str
) -> None:
    conn.execute("CREATE TABLE secret (id bigint PRIMARY KEY, body text)")
    with Store(login_role, "public") as store, pytest.raises(SourceError) as caught:
        store.add_source("secret", text=["body"])
    role = psycopg.conninfo.conninfo_to_dict(login_role)["user"]
    assert str(caught.value) == (
        f"role {role} may not read public.secret or create triggers on it: "
        f"GRANT SELECT, TRIGGER ON public.secret TO {role}"
    )


# -- documents and search_documents ----------------------------------------------------


def test_add_documents_queues_them(ix: Indexer, conn: Connection) -> None:
    ids = ix.add_documents(["a long text", "another"], [{"lang": "en"}, {}])
    assert len(ids) == 2
    rows = conn.execute("SELECT id, content, metadata FROM documents ORDER BY id").fetchall()
    assert [(r["id"], r["content"], r["metadata"]) for r in rows] == [
        (ids[0], "a long text", {"lang": "en"}),
        (ids[1], "another", {}),
    ]
    apply_changes(conn)
    status = {r["source"]: r for r in ix.sources()}["documents"]
    assert status["pending"] == 2
    with pytest.raises(InvalidInput, match="same length"):
        ix.add_documents(["a"], [])
    with pytest.raises(InvalidInput, match="not one string"):
        ix.add_documents("a")


def test_search_documents_returns_k_distinct_documents(
    ix: Indexer, conn: Connection, embedder: Embedder
) -> None:
    # One long document owns every chunk nearest to the query; the second and third
    # nearest documents lie beyond them.
    database_passages = [
        f"PostgreSQL is a relational database; part {i} of its manual." for i in range(60)
    ]
    index_document(conn, embedder, "documents", "1", database_passages, '{"kind": "manual"}')
    index_document(
        conn, embedder, "documents", "2", ["MySQL is another relational database server."]
    )
    index_document(conn, embedder, "documents", "3", ["Cats sleep in the sun most of the day."])
    hits = ix.search_documents("the PostgreSQL manual", k=3, passages=2)
    assert [h.key for h in hits] == ["1", "2", "3"]
    assert all(isinstance(h, DocumentHit) for h in hits)
    best = hits[0]
    assert best.source == "documents"
    assert best.content in database_passages
    assert best.char_end - best.char_start == len(best.content)
    assert best.metadata == {"kind": "manual"}
    assert len(best.passages) == 2
    assert best.passages[0]["content"] == best.content
    assert best.passages[0]["score"] >= best.passages[1]["score"]
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert len(hits[1].passages) == 1
    # The filter and the source narrow it.
    only = ix.search_documents("the PostgreSQL manual", k=3, filter={"kind": "manual"})
    assert [h.key for h in only] == ["1"]
    assert ix.search_documents("the PostgreSQL manual", source="documents")[0].key == "1"


def test_search_documents_by_source(ix: Indexer, conn: Connection, embedder: Embedder) -> None:
    make_notes(conn, rows=1)
    ix.add_source("notes", text=["body"])
    index_document(conn, embedder, "public.notes", "1", ["Dogs bark at the postman."])
    index_document(conn, embedder, "documents", "7", ["Dogs are loyal animals."])
    everywhere = ix.search_documents("dogs", k=5)
    assert {(h.source, h.key) for h in everywhere} == {("public.notes", "1"), ("documents", "7")}
    notes = ix.search_documents("dogs", k=5, source="public.notes")
    assert [(h.source, h.key) for h in notes] == [("public.notes", "1")]
    with pytest.raises(SourceError, match=r"^no source named nowhere$"):
        ix.search_documents("dogs", source="nowhere")
    with pytest.raises(InvalidInput, match="between 1 and 1000"):
        ix.search_documents("dogs", k=0)
    with pytest.raises(InvalidInput, match="passages must be"):
        ix.search_documents("dogs", passages=0)
    with pytest.raises(InvalidInput, match="empty"):
        ix.search_documents(" ")


def test_search_documents_with_k_beyond_ef_search(
    ix: Indexer, conn: Connection, embedder: Embedder
) -> None:
    vector = embedder.embed(["a passage"])[0]
    conn.execute(
        "INSERT INTO source_documents (source_id, doc_key, state) "
        "SELECT s.id, i::text, 'indexed' FROM sources s, generate_series(1, 150) i"
    )
    conn.execute(
        "INSERT INTO chunks (content, embedding, state, document_id, source_id, doc_key, "
        "position, char_start, char_end) "
        "SELECT 'passage ' || d.doc_key, %s, 'embedded', d.id, d.source_id, d.doc_key, 0, 0, "
        "length('passage ' || d.doc_key) FROM source_documents d",
        (vector,),
    )
    hits = ix.search_documents("a passage", k=120)
    assert len(hits) == 120
    assert len({h.key for h in hits}) == 120


# -- HTTP -----------------------------------------------------------------------------


@pytest.fixture
def api(settings: Settings, database: str, embedder: Embedder) -> Iterator[Api]:
    with serve(settings, database, embedder) as api:
        yield api


def test_http_search_by_document(api: Api, conn: Connection, embedder: Embedder) -> None:
    index_document(
        conn, embedder, "documents", "1", ["PostgreSQL is a database.", "It has indexes."]
    )
    index_document(conn, embedder, "documents", "2", ["Cats purr."])
    response = api.client.post(
        "/search", json={"query": "database", "k": 2, "group": "document", "passages": 2}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["key"] for r in results] == ["1", "2"]
    first = results[0]
    assert set(first) == {
        "source",
        "key",
        "score",
        "content",
        "position",
        "char_start",
        "char_end",
        "metadata",
        "passages",
    }
    assert first["source"] == "documents"
    assert first["content"] == "PostgreSQL is a database."
    assert (first["position"], first["char_start"], first["char_end"]) == (0, 0, 25)
    assert len(first["passages"]) == 2
    one_source = api.client.post(
        "/search", json={"query": "database", "group": "document", "source": "documents"}
    )
    assert [r["key"] for r in one_source.json()["results"]] == ["1", "2"]
    # Row search finds rows, never passages: with no row inserted, nothing.
    chunks = api.client.post("/search", json={"query": "database", "k": 1})
    assert chunks.json()["results"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "x", "group": "row"}, "group: Input should be 'chunk' or 'document'"),
        ({"query": "x", "source": "documents"}, '"source" goes with "group": "document"'),
        ({"query": "x", "passages": 2}, '"passages" goes with "group": "document"'),
        ({"query": "x", "group": "document", "passages": 0}, "passages: Input should be"),
        ({"query": "x", "group": "document", "passages": 21}, "passages: Input should be"),
        ({"query": "x", "group": "document", "passages": "2"}, "passages: Input should be"),
        ({"query": "x", "group": "document", "source": 3}, "source: Input should be"),
        ({"query": "x", "group": "document", "source": "nowhere"}, "no source named nowhere"),
        ({"query": "x", "group": "document", "k": 0}, "k: Input should be"),
    ],
)
def test_bad_document_searches_are_422(api: Api, body: dict[str, object], message: str) -> None:
    response = api.client.post("/search", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_metrics_have_per_source_gauges(api: Api, conn: Connection, ix: Indexer) -> None:
    make_notes(conn, rows=2)
    ix.add_source("notes", text=["body"])
    conn.execute("INSERT INTO notes (id, body) VALUES (5, 'five'), (6, 'six'), (7, 'seven')")
    apply_changes(conn)
    conn.execute("UPDATE source_documents SET state = 'failed' WHERE doc_key = '5'")
    conn.execute("UPDATE source_documents SET state = 'claimed' WHERE doc_key = '6'")
    ix.add_documents(["one"])
    apply_changes(conn)
    conn.execute(
        "UPDATE source_documents SET state = 'indexed', "
        "queued_at = now() - interval '1 hour' WHERE doc_key = '1'"
    )
    text = api.client.get("/metrics").text
    documents = _samples(text, "indexer_source_documents")
    assert documents[(("source", "public.notes"), ("state", "pending"))] == 1
    assert documents[(("source", "public.notes"), ("state", "in_flight"))] == 1
    assert documents[(("source", "public.notes"), ("state", "failed"))] == 1
    assert documents[(("source", "public.notes"), ("state", "indexed"))] == 0
    assert documents[(("source", "documents"), ("state", "indexed"))] == 1
    assert documents[(("source", "documents"), ("state", "pending"))] == 0
    lag = _samples(text, "indexer_source_lag_seconds")
    assert lag[(("source", "public.notes"),)] >= 0
    # A source removed since the last scrape loses its series.
    ix.remove_source("public.notes")
    after = _samples(api.client.get("/metrics").text, "indexer_source_documents")
    assert {dict(k)["source"] for k in after} == {"documents"}


def test_metrics_count_indexed_documents_and_lag(
    api: Api, conn: Connection, ix: Indexer, embedder: Embedder
) -> None:
    index_document(conn, embedder, "documents", "100", ["indexed"])
    ix.add_documents(["waiting"])
    apply_changes(conn)
    conn.execute(
        "UPDATE source_documents SET queued_at = now() - interval '1 hour' WHERE state = 'pending'"
    )
    text = api.client.get("/metrics").text
    documents = _samples(text, "indexer_source_documents")
    assert documents[(("source", "documents"), ("state", "indexed"))] == 1
    assert documents[(("source", "documents"), ("state", "pending"))] == 1
    assert 3500 < _samples(text, "indexer_source_lag_seconds")[(("source", "documents"),)] < 7200


def test_the_application_role_needs_no_rights_on_the_indexer_tables(
    ix: Indexer, database: str, conn: Connection
) -> None:
    make_notes(conn, rows=1)
    ix.add_source("notes", text=["body"], metadata=["lang"])
    role = "a_" + uuid.uuid4().hex[:12]
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {}").format(ident))
    try:
        with psycopg.connect(make_conninfo(database, user=role), autocommit=True) as app:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("SELECT 1 FROM source_documents")
            app.execute("INSERT INTO notes (id, body) VALUES (2, 'two'), (3, 'three')")
            apply_changes(conn)  # as a daemon does
            app.execute("UPDATE notes SET lang = 'de' WHERE id = 2")  # metadata: queued
            app.execute("UPDATE notes SET title = 'x' WHERE id = 3")  # not watched: nothing
            app.execute("DELETE FROM notes WHERE id = 1")
        apply_changes(conn)
        rows = conn.execute(
            "SELECT doc_key, version FROM source_documents d JOIN sources s "
            "ON s.id = d.source_id WHERE s.name = 'public.notes' ORDER BY doc_key"
        ).fetchall()
        assert [(r["doc_key"], r["version"]) for r in rows] == [("2", 2), ("3", 1)]
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        conn.execute(sql.SQL("DROP ROLE {}").format(ident))
