"""The Python API applications use: Indexer.add / search / status / embed."""

from __future__ import annotations

import numpy as np
import pytest

from indexer import Embedder, Indexer, Settings
from indexer.exceptions import InvalidInput
from indexer.store import Store
from indexer.worker import Worker


def test_add_then_search_with_a_metadata_filter(settings: Settings, embedder: Embedder) -> None:
    with Indexer(settings, embedder=embedder) as ix:
        ids = ix.add(
            ["PostgreSQL stores rows in tables.", "MySQL is another database.", "Cats purr."],
            [{"topic": "db", "name": "pg"}, {"topic": "db"}, {"topic": "pets"}],
        )
        assert len(ids) == 3
        assert ix.status()["backlog"] == 3
        with Store(settings.database_url or "", settings.schema) as store:
            Worker(settings, store, embedder).run(once=True)
        hits = ix.search("relational database", k=3)
        assert {h.id for h in hits[:2]} == set(ids[:2])
        only_pets = ix.search("relational database", k=3, metadata_filter={"topic": "pets"})
        assert [h.id for h in only_pets] == [ids[2]]
        assert only_pets[0].metadata == {"topic": "pets"}
        assert ix.status()["embedded"] == 3


def test_embed_needs_no_database(embedder: Embedder) -> None:
    ix = Indexer(Settings(database_url="postgresql://nobody@/nowhere"), embedder=embedder)
    vectors = ix.embed(["a", "b"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_bad_arguments_are_clear(settings: Settings, embedder: Embedder) -> None:
    with Indexer(settings, embedder=embedder) as ix:
        with pytest.raises(InvalidInput, match="between 1 and 1000"):
            ix.search("x", k=0)
        with pytest.raises(InvalidInput, match="empty"):
            ix.search("  ")
        with pytest.raises(InvalidInput, match="same length"):
            ix.add(["a", "b"], [{}])
        with pytest.raises(InvalidInput, match="not a string"):
            ix.embed(["ok", 3])  # type: ignore[list-item]


def test_both_searches_take_the_metadata_filter_by_either_name(
    settings: Settings, embedder: Embedder
) -> None:
    texts = ["PostgreSQL stores rows in tables.", "Cats purr when they are content."]
    metadata = [{"topic": "db"}, {"topic": "pets"}]
    with Indexer(settings, embedder=embedder) as ix:
        ix.add(texts, metadata)
        ix.add_documents(texts, metadata)
        with Store(settings.database_url or "", settings.schema) as store:
            Worker(settings, store, embedder).run(once=True)
        pets = {"topic": "pets"}
        for hits in (
            ix.search("a database", k=5, filter=pets),
            ix.search("a database", k=5, metadata_filter=pets),
        ):
            assert [h.content for h in hits] == [texts[1]]
        for docs in (
            ix.search_documents("a database", k=5, filter=pets),
            ix.search_documents("a database", k=5, metadata_filter=pets),
        ):
            assert [d.content for d in docs] == [texts[1]]
        for search in (ix.search, ix.search_documents):
            with pytest.raises(InvalidInput, match="the same argument"):
                search("a database", filter=pets, metadata_filter=pets)
