"""Attacks on the remote embedder (migration 0010), as tests: what a malicious or broken
server could send, against a real HTTP server (tests/fake_provider.py).  Each test
failed before the fix committed with it."""

from __future__ import annotations

import time
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest

from indexer.embedding.remote import ProviderError, RemoteConfig, RemoteEmbedder
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


def test_an_endless_answer_is_not_read_to_its_end(
    embedder: RemoteEmbedder, provider: FakeProvider
) -> None:
    """Attack: a 200 promising 128 MiB (or 2 GB: the same) for one vector of 8 numbers.
    Before: the whole body was read into memory, then found not to be JSON."""
    provider.script(Fault("flood", size=128 << 20))
    with pytest.raises(ProviderError, match="larger than"):
        embedder.embed_partial(embedder.tokenize(["one text"]))
    deadline = time.monotonic() + 10
    while not provider.flooded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert provider.flooded and provider.flooded[0] < 32 << 20


def _gzip_of_spaces(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # the gzip container
    block = b" " * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()


def test_a_gzip_bomb_is_not_unpacked_to_its_end(
    embedder: RemoteEmbedder, provider: FakeProvider
) -> None:
    """Attack: a 200 of a few hundred kilobytes, gzipped, that unpacks to 512 MiB.
    Before: all of it was unpacked into memory (twice: the parts, then joined)."""
    bomb = _gzip_of_spaces(512 << 20)
    provider.script(Fault("raw", status=200, body=bomb, headers=(("Content-Encoding", "gzip"),)))
    tracemalloc.start()
    try:
        with pytest.raises(ProviderError, match="larger than"):
            embedder.embed_partial(embedder.tokenize(["one text"]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20  # one read of 64 KiB unpacks to 64 MiB at most, held twice


def test_an_answer_trickling_in_is_given_up_after_timeout_s(
    embedder: RemoteEmbedder, provider: FakeProvider
) -> None:
    """Attack: the right answer, one byte every 50 ms: each read is well within the 1 s
    timeout, the whole takes a minute.  Before: the request (and the worker, and every
    other model's work behind it) waited for all of it; now it is a passing fault,
    retried."""
    provider.script(Fault("trickle", delay_s=0.05))
    start = time.monotonic()
    batch = embedder.embed_partial(embedder.tokenize(["one text"]))
    assert time.monotonic() - start < 5
    assert batch.usage.retries == 1 and not batch.errors
