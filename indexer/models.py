"""SQLAlchemy 2.0 models of the tables the migrations create, for applications.

Migrations own the schema (``indexer migrate`` / ``alembic upgrade head``); these
classes describe it so an application can use the ORM on it.  A test compares them with
a freshly migrated database (Alembic's autogenerate comparison, and every constraint
and index definition in the catalog), so the two cannot drift apart.

``VectorCache`` is the vector cache.  ``Source``, ``SourceDocument`` and ``Document`` are
the sources of migration 0005: the registered tables, the queue of their documents, and
the built-in ``documents`` table; ``SourceChange`` the changes their triggers append
(migration 0008).  Register a table with ``SELECT add_source(...)``
(or ``indexer sources add``), not by inserting into ``sources``: that also installs its
triggers.  ``EmbeddingModel`` is the model registry, ``ModelWork`` each model's queue and
``Chunking`` the recorded chunk settings (migration 0009); each model added since has its
vectors in a table ``model_<id>_vectors`` of its own dimension, not modelled here.  Not
modelled either: the views ``indexer_status``, ``indexer_source_status`` and
``indexer_model_status``
(read them with ``select * from ...``) and the triggers and functions.  The foreign key
``chunks.document_id`` to ``source_documents`` is declared, without a relationship
(``source_documents.source_id`` has none in the schema: see migration 0005);
``Event.chunk_ids`` is an array of ids, not a reference, since events outlive the rows
they name.

The tables carry no schema, so the same classes serve any ``INDEXER_SCHEMA``.  For a
schema other than ``public``, map it per connection::

    engine = create_engine(url).execution_options(schema_translate_map={None: "tenant_a"})

(pgvector's type and operators must stay reachable: they live in the schema where
``CREATE EXTENSION vector`` ran, ``public`` unless it first ran with another schema
first on the search path).  Importing this module loads SQLAlchemy and pgvector only,
never the model or ONNX Runtime.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any, Final, Literal

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Text,
    TextClause,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, REGCLASS
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Dimensions of the vectors all-MiniLM-L6-v2 writes.
DIMENSIONS: Final = 384

State = Literal["pending", "claimed", "embedded", "failed"]
#: ``chunks.state``: a text column with a CHECK constraint (not a PostgreSQL enum).
STATES: Final[tuple[State, ...]] = ("pending", "claimed", "embedded", "failed")

DocumentState = Literal["pending", "claimed", "indexed", "failed"]
#: ``source_documents.state``: a text column with a CHECK constraint.
DOCUMENT_STATES: Final[tuple[DocumentState, ...]] = ("pending", "claimed", "indexed", "failed")

EventKind = Literal[
    "worker_started",
    "worker_stopped",
    "batch_completed",
    "batch_failed",
    "model_batch",
    "provider_away",
]
EVENT_KINDS: Final[tuple[EventKind, ...]] = (
    "worker_started",
    "worker_stopped",
    "batch_completed",
    "batch_failed",
    "model_batch",
    "provider_away",
)

_TIMESTAMPTZ = DateTime(timezone=True)

#: hnsw.ef_search the indexer's own search uses (indexer.store.store.EF_SEARCH).
EF_SEARCH: Final = 100

# The iterative scan exists from pgvector 0.8 on; on 0.7 the guard selects no row, so
# set_config never runs (setting an unknown hnsw.* parameter is an error there).
_SEARCH_SETTINGS = """
SELECT set_config('hnsw.ef_search', :ef_search, true) AS ef_search,
       (SELECT set_config('hnsw.iterative_scan', 'strict_order', true)
        FROM pg_extension WHERE extname = 'vector'
          AND string_to_array(split_part(extversion, '-', 1), '.')::int[] >= '{0,8}')
           AS iterative_scan
"""


def search_settings(ef_search: int = EF_SEARCH) -> TextClause:
    """The statement that sets up a transaction for similarity search as the indexer does.

    ``session.execute(search_settings())`` before the query: HNSW keeps ``ef_search``
    candidates, and on pgvector 0.8 or newer the iterative scan keeps going until
    ``LIMIT`` rows pass a metadata filter.  Both last until the transaction ends.
    """
    return text(_SEARCH_SETTINGS).bindparams(ef_search=str(ef_search))


class Base(DeclarativeBase):
    """The indexer's tables.  ``Base.metadata`` holds them, with no schema."""

    metadata = MetaData()


class Chunk(Base):
    """A row of ``chunks``: insert ``content`` (and ``metadata_``); the daemon does the rest.

    Columns other than ``content`` and ``metadata_`` belong to the daemon and the
    table's trigger: an insert sets ``state`` to ``pending`` (or ``embedded`` when a
    vector is supplied), and a change of ``content`` drops the vector and queues the
    row again.  The ``metadata`` column is ``metadata_`` here, since declarative
    classes reserve ``metadata``.
    """

    __tablename__ = "chunks"

    id: Mapped[int] = mapped_column(
        BigInteger, Identity(always=False), primary_key=True, autoincrement=True
    )
    content: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    # Written from a list or a numpy array; read back as pgvector-python returns it (a
    # list of floats from 0.5 on, a numpy array before).
    embedding: Mapped[Any | None] = mapped_column(Vector(DIMENSIONS))
    embedding_model: Mapped[str | None] = mapped_column(Text)
    embedded_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)
    state: Mapped[State] = mapped_column(
        Text,
        server_default=text("'pending'::text"),
        comment="pending, claimed (a daemon holds a lease), embedded, or failed (see last_error)",
    )
    content_version: Mapped[int] = mapped_column(
        Integer,
        server_default=text("1"),
        comment="Bumped whenever content changes; a daemon writes a vector only for the version"
        " it read",
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    retry_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)
    claimed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_expires_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)
    created_at: Mapped[datetime.datetime] = mapped_column(
        _TIMESTAMPTZ, server_default=text("now()")
    )
    updated_at: Mapped[datetime.datetime] = mapped_column(
        _TIMESTAMPTZ, server_default=text("now()")
    )
    content_hash: Mapped[bytes | None] = mapped_column(
        LargeBinary,
        comment="sha256 of the text the model read for the stored embedding (the first "
        "INDEXER_MAX_CHARS characters, UTF-8); NULL while not embedded",
    )
    # A source document's passage (written by the daemon); NULL for a row inserted here.
    document_id: Mapped[int | None] = mapped_column(
        BigInteger,
        ForeignKey("source_documents.id", ondelete="CASCADE"),
        comment="The source document this row is a passage of (NULL: a row inserted straight here)",
    )
    source_id: Mapped[int | None] = mapped_column(Integer)
    doc_key: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int | None] = mapped_column(
        Integer, comment="The passage's place in its document, from 0"
    )
    char_start: Mapped[int | None] = mapped_column(
        Integer, comment="Where the passage starts in the document's text (0-based, characters)"
    )
    char_end: Mapped[int | None] = mapped_column(Integer, comment="Where it ends (exclusive)")

    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'claimed', 'embedded', 'failed')", name="chunks_state_check"
        ),
        # The daemon's claim scans only the rows that still need work.
        Index("chunks_queue_idx", "id", postgresql_where=text("state IN ('pending', 'claimed')")),
        Index("chunks_failed_idx", "id", postgresql_where=text("state = 'failed'")),
        # Cosine distance: order by Chunk.embedding.cosine_distance(q) to use it.
        Index(
            "chunks_embedding_idx",
            "embedding",
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
        # A document's passages in order.
        Index(
            "chunks_document_idx",
            "document_id",
            "position",
            postgresql_where=text("document_id IS NOT NULL"),
        ),
        {
            "comment": "Text to embed. Insert content (and metadata); the indexer daemon fills"
            " embedding."
        },
    )

    def __repr__(self) -> str:
        return f"Chunk(id={self.id!r}, state={self.state!r}, content={self.content[:40]!r})"


class Event(Base):
    """A row of ``events``: one per batch and per daemon start and stop (append-only).

    ``model_batch``: a batch of a model's background work (migration 0009:
    ``detail.model`` names it), apart from the batches of the active model's queues.
    ``provider_away``: a remote model's server was busy or down, and a daemon gave its
    work back to wait (migration 0010).  A remote model's batches carry what the
    provider reported in ``detail.provider`` (tokens, requests, retries, deferrals,
    cost)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(
        BigInteger, Identity(always=True), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime.datetime] = mapped_column(
        _TIMESTAMPTZ, server_default=text("clock_timestamp()")
    )
    kind: Mapped[EventKind] = mapped_column(Text)
    worker_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    row_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    token_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    claim_ms: Mapped[float | None] = mapped_column(Double)
    embed_ms: Mapped[float | None] = mapped_column(Double)
    write_ms: Mapped[float | None] = mapped_column(Double)
    chunk_ids: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), server_default=text("'{}'::bigint[]")
    )
    error: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    reused_count: Mapped[int] = mapped_column(
        Integer,
        server_default=text("0"),
        comment="Rows of the batch whose vector came from the vector cache (no model call)",
    )

    __table_args__ = (
        CheckConstraint(
            "kind IN ('worker_started', 'worker_stopped', 'batch_completed', 'batch_failed', "
            "'model_batch', 'provider_away')",
            name="events_kind_check",
        ),
        Index("events_at_idx", "at"),
        Index("events_kind_at_idx", "kind", "at"),
        {
            "comment": "One row per batch (batch_completed / batch_failed) and per daemon start"
            " and stop."
        },
    )

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, kind={self.kind!r}, at={self.at!r})"


class VectorCache(Base):
    """A row of ``vector_cache``: the vector of one model input, reused for equal text.

    ``model`` is the embedder's cache key (name, variant, max tokens, graph digest);
    ``hash`` the sha256 of the text the model read.  Filled and pruned by the daemon.
    """

    __tablename__ = "vector_cache"

    model: Mapped[str] = mapped_column(Text, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    embedding: Mapped[Any] = mapped_column(Vector())  # any model's dimension
    created_at: Mapped[datetime.datetime] = mapped_column(
        _TIMESTAMPTZ, server_default=text("now()")
    )
    used_at: Mapped[datetime.datetime] = mapped_column(_TIMESTAMPTZ, server_default=text("now()"))

    __table_args__ = (
        Index("vector_cache_used_at_idx", "used_at"),
        {
            "comment": "Vectors by (model cache key, sha256 of the model input), reused for "
            "equal text; pruned by the daemon (INDEXER_CACHE_MAX_AGE_DAYS, "
            "INDEXER_CACHE_MAX_ENTRIES)"
        },
    )

    def __repr__(self) -> str:
        return f"VectorCache(model={self.model!r}, hash={self.hash.hex()[:12]!r})"


class Source(Base):
    """A row of ``sources``: a table whose rows the indexer keeps chunked and embedded.

    Written by ``add_source()`` / ``remove_source()`` (which also install and drop the
    table's triggers) and by the daemon's back-fill; read it, do not insert into it.
    """

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(
        Integer, Identity(always=True), primary_key=True, autoincrement=True
    )
    name: Mapped[str] = mapped_column(Text)
    table_schema: Mapped[str] = mapped_column(Text)
    table_name: Mapped[str] = mapped_column(Text)
    key_column: Mapped[str] = mapped_column(Text)
    key_type: Mapped[str] = mapped_column(Text, comment="format_type() of the key column")
    text_columns: Mapped[list[str]] = mapped_column(ARRAY(Text))
    metadata_columns: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("'{}'::text[]")
    )
    metadata_json: Mapped[str | None] = mapped_column(
        Text, comment="A jsonb column whose object is merged into every chunk's metadata"
    )
    builtin: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    backfill_after: Mapped[str | None] = mapped_column(
        Text, comment="The last key the back-fill queued (text); NULL before the first range"
    )
    backfilled: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    backfill_done_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)
    created_at: Mapped[datetime.datetime] = mapped_column(
        _TIMESTAMPTZ, server_default=text("now()")
    )
    relation: Mapped[str | None] = mapped_column(
        REGCLASS,
        comment="The source's table (follows a rename; NULL if it was gone at the upgrade)",
    )
    key_attnum: Mapped[int | None] = mapped_column(
        SmallInteger,
        comment="The key column by number: a column renamed is followed (the names above are"
        " as registered)",
    )
    text_attnums: Mapped[list[int] | None] = mapped_column(ARRAY(SmallInteger))
    metadata_attnums: Mapped[list[int] | None] = mapped_column(ARRAY(SmallInteger))
    metadata_json_attnum: Mapped[int | None] = mapped_column(SmallInteger)

    __table_args__ = (
        CheckConstraint("cardinality(text_columns) > 0", name="sources_text_columns_check"),
        UniqueConstraint("name", name="sources_name_key"),
        UniqueConstraint("table_schema", "table_name", name="sources_table_schema_table_name_key"),
        {
            "comment": "Tables whose rows the indexer keeps chunked and embedded (add_source /"
            " remove_source)"
        },
    )

    def __repr__(self) -> str:
        return f"Source(id={self.id!r}, name={self.name!r})"


class SourceDocument(Base):
    """A row of ``source_documents``: one document of a source, and its queue state.

    Written by the source's triggers and the daemon; ``doc_key`` is the key column's
    value as text.  Its chunks are the rows of ``chunks`` with this ``document_id``.
    """

    __tablename__ = "source_documents"

    id: Mapped[int] = mapped_column(
        BigInteger, Identity(always=True), primary_key=True, autoincrement=True
    )
    source_id: Mapped[int] = mapped_column(Integer)  # no foreign key: see migration 0005
    doc_key: Mapped[str] = mapped_column(Text)
    state: Mapped[DocumentState] = mapped_column(Text, server_default=text("'pending'::text"))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    retry_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)
    claimed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_expires_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)
    chunk_count: Mapped[int | None] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(
        Boolean,
        server_default=text("false"),
        comment="The document was longer than INDEXER_DOCUMENT_MAX_CHARS or made more than "
        "INDEXER_DOCUMENT_MAX_CHUNKS chunks: only its beginning is indexed",
    )
    queued_at: Mapped[datetime.datetime] = mapped_column(_TIMESTAMPTZ, server_default=text("now()"))
    indexed_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)

    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'claimed', 'indexed', 'failed')",
            name="source_documents_state_check",
        ),
        UniqueConstraint("source_id", "doc_key", name="source_documents_source_id_doc_key_key"),
        Index(
            "source_documents_queue_idx",
            "id",
            postgresql_where=text("state IN ('pending', 'claimed')"),
        ),
        Index(
            "source_documents_failed_idx", "source_id", postgresql_where=text("state = 'failed'")
        ),
        {
            "comment": "Every document of every source: its queue state, version, chunk count,"
            " last error"
        },
    )

    def __repr__(self) -> str:
        return (
            f"SourceDocument(id={self.id!r}, source_id={self.source_id!r}, "
            f"doc_key={self.doc_key!r}, state={self.state!r})"
        )


class SourceChange(Base):
    """A row of ``source_changes``: what a source table's trigger saw (migration 0008),
    until the daemon applies it: a key changed, a key gone, or the whole table
    truncated (``doc_key`` None).  Appended by the triggers only; read it, never write it.
    """

    __tablename__ = "source_changes"

    id: Mapped[int] = mapped_column(
        BigInteger, Identity(always=True), primary_key=True, autoincrement=True
    )
    source_id: Mapped[int] = mapped_column(Integer)  # no foreign key: see migration 0008
    doc_key: Mapped[str | None] = mapped_column(Text)
    gone: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(
        Text,
        comment="Why the change could not be applied (a key too long for the documents' "
        "index, say): it is kept, not applied again, and shown as its source's problem.",
    )

    __table_args__ = (
        Index("source_changes_key_idx", "source_id", "doc_key"),
        {
            "comment": "What the triggers of sources' tables saw, to be applied by the daemon "
            "(apply_source_changes): a key changed or gone, or the table truncated (doc_key NULL)."
        },
    )

    def __repr__(self) -> str:
        return (
            f"SourceChange(id={self.id!r}, source_id={self.source_id!r}, "
            f"doc_key={self.doc_key!r}, gone={self.gone!r})"
        )


class Document(Base):
    """A row of the built-in ``documents`` table: insert ``content`` (any length) and
    ``metadata_``; the daemon chunks, embeds and indexes it (``search_documents``)."""

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(
        BigInteger, Identity(always=False), primary_key=True, autoincrement=True
    )
    content: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime.datetime] = mapped_column(
        _TIMESTAMPTZ, server_default=text("now()")
    )

    __table_args__ = (
        {
            "comment": "Documents of any length: insert content (and metadata); the indexer "
            "chunks, embeds and indexes them (search_documents)"
        },
    )

    def __repr__(self) -> str:
        return f"Document(id={self.id!r}, content={self.content[:40]!r})"


class EmbeddingModel(Base):
    """A row of ``models`` (migration 0009): a model whose vectors the indexer keeps.

    Written by ``add_model`` / ``activate_model`` / ``drop_model`` (``indexer models
    add|activate|drop``), which also create and drop its vectors' table; read it, do not
    write it.  ``storage`` ``column``: its vectors are ``chunks.embedding``; ``table``:
    ``model_<id>_vectors`` (``chunk_id``, ``content_version``, ``content_hash``,
    ``embedding``, ``embedded_at``; not modelled, since each has its own dimension).
    """

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(
        Integer, Identity(always=True), primary_key=True, autoincrement=True
    )
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, server_default=text("'local'::text"))
    dimension: Mapped[int] = mapped_column(Integer)
    halfvec: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    storage: Mapped[str] = mapped_column(
        Text, comment="column: chunks.embedding; table: model_<id>_vectors"
    )
    record: Mapped[dict[str, Any] | None] = mapped_column(
        JSONB,
        comment="Everything that decides the vectors, as the daemon describes the model (NULL "
        "until a daemon adopts a model registered by the upgrade)",
    )
    fingerprint: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    fill_after: Mapped[int] = mapped_column(
        BigInteger,
        server_default=text("0"),
        comment="The chunks up to this id are queued for the model, or have its vector",
    )
    created_at: Mapped[datetime.datetime] = mapped_column(
        _TIMESTAMPTZ, server_default=text("now()")
    )
    activated_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)

    __table_args__ = (
        UniqueConstraint("name", name="models_name_key"),
        CheckConstraint(
            "name ~ '^[^[:cntrl:]]{1,200}$' AND name = btrim(name)", name="models_name_check"
        ),
        CheckConstraint("kind IN ('local', 'remote')", name="models_kind_check"),
        CheckConstraint("dimension BETWEEN 1 AND 16000", name="models_dimension_check"),
        CheckConstraint("storage IN ('column', 'table')", name="models_storage_check"),
        CheckConstraint("NOT (halfvec AND storage = 'column')", name="models_halfvec_check"),
        Index("models_active_idx", text("(true)"), unique=True, postgresql_where=text("active")),
        Index(
            "models_column_idx",
            text("(true)"),
            unique=True,
            postgresql_where=text("storage = 'column'"),
        ),
        {
            "comment": "The models whose vectors the indexer keeps (indexer models list|add|"
            "activate|drop); the active one serves search by default."
        },
    )

    def __repr__(self) -> str:
        return f"EmbeddingModel(id={self.id!r}, name={self.name!r}, active={self.active!r})"


class ModelWork(Base):
    """A row of ``model_pending``: a chunk a model has not embedded yet (the daemon's)."""

    __tablename__ = "model_pending"

    model_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    chunk_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    fresh: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    claimed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_expires_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    retry_at: Mapped[datetime.datetime | None] = mapped_column(_TIMESTAMPTZ)
    failed: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    __table_args__ = (
        Index(
            "model_pending_queue_idx",
            "model_id",
            text("fresh DESC"),
            "chunk_id",
            postgresql_where=text("NOT failed"),
        ),
        {
            "comment": "Chunks a model has not embedded yet (newest work first; failed: "
            "parked, see last_error)"
        },
    )

    def __repr__(self) -> str:
        return f"ModelWork(model_id={self.model_id!r}, chunk_id={self.chunk_id!r})"


class Chunking(Base):
    """The row of ``chunking`` (migration 0009): how documents are cut into passages,
    recorded by the first daemon; ``indexer sources recut`` changes it.  Read it."""

    __tablename__ = "chunking"

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    tokens: Mapped[int] = mapped_column(Integer)
    overlap: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime.datetime] = mapped_column(
        _TIMESTAMPTZ, server_default=text("now()")
    )

    __table_args__ = (
        CheckConstraint("one", name="chunking_one_check"),
        CheckConstraint("tokens > 0", name="chunking_tokens_check"),
        CheckConstraint("overlap >= 0", name="chunking_overlap_check"),
        {
            "comment": "How documents are cut into passages (tokens, overlap): one row, "
            "recorded by the first daemon; indexer sources recut changes it and cuts every "
            "document again"
        },
    )

    def __repr__(self) -> str:
        return f"Chunking(tokens={self.tokens!r}, overlap={self.overlap!r})"


__all__ = [
    "DIMENSIONS",
    "DOCUMENT_STATES",
    "EF_SEARCH",
    "EVENT_KINDS",
    "STATES",
    "Base",
    "Chunk",
    "Chunking",
    "Document",
    "DocumentState",
    "EmbeddingModel",
    "Event",
    "EventKind",
    "ModelWork",
    "Source",
    "SourceChange",
    "SourceDocument",
    "State",
    "VectorCache",
    "search_settings",
]
