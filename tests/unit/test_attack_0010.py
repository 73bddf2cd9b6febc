"""Attacks on the remote embedder (migration 0010), as tests: what a malicious or broken
server could send, against a real HTTP server (tests/fake_provider.py).  Each test
failed before the fix committed with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from indexer.embedding.remote import RemoteConfig, RemoteEmbedder
from tests.fake_provider import FakeProvider, Fault

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider(dimension=8) as fake:
        yield fake


@pytest.fixture
def embedder(provider: FakeProvider) -> Iterator[RemoteEmbedder]:
    config = RemoteConfig(
        url=provider.url, model="fake-embedding", dimension=8, api_key_env="K", timeout_s=1.0
    )
    with RemoteEmbedder("fake-remote", config, environ={"K": KEY}, sleep=lambda s: None) as remote:
        yield remote


def test_a_refusal_nested_too_deep_is_a_refusal(
    embedder: RemoteEmbedder, provider: FakeProvider
) -> None:
    """Attack: a 400 whose body is JSON nested 100 000 deep.  Before: RecursionError
    escaped the call (and the worker)."""
    provider.script(Fault("raw", status=400, body=b'{"error": ' + b"[" * 100_000))
    batch = embedder.embed_partial(embedder.tokenize(["one text"]))
    assert list(batch.errors) == [0] and batch.errors[0].startswith("HTTP 400")


def test_a_key_cut_by_the_length_of_a_message_is_still_hidden(
    embedder: RemoteEmbedder, provider: FakeProvider
) -> None:
    """Attack: a provider echoes the key where the message is cut to its first 200
    characters.  Before: the key was redacted after the cut, so its first characters
    (here 20 of 24) went into the row's last_error, events and logs."""
    message = "x" * 170 + " you sent " + KEY
    provider.script(Fault("raw", status=400, body=f'{{"error": "{message}"}}'.encode()))
    batch = embedder.embed_partial(embedder.tokenize(["one text"]))
    assert KEY[:8] not in batch.errors[0]
