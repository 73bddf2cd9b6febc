"""A remote server's answers, read and checked before anything of them is used: bounded
bodies, Retry-After, error texts (the key redacted), vectors in order, of the right
dimension, finite, and believable token counts; see :mod:`indexer.embedding.remote`."""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from indexer.exceptions import EmbeddingError, ProviderAway

#: The longest single wait a Retry-After may impose (a longer one is cut to this).
_MAX_DEFERRAL_S = 60.0
#: The wait after a 429 that says nothing about when to come back.
_DEFAULT_DEFERRAL_S = 1.0
#: The shortest wait counted: "Retry-After: 0" repeated forever still runs out of patience.
_MIN_DEFERRAL_S = 0.1
#: Characters of a provider's error text kept in a one-line message.
_SHOWN_CHARS = 200
#: Bytes an answer may take per number, per item and in all besides: a float written
#: with every digit, indented, is under 64; more is no answer but a flood.
_BYTES_PER_NUMBER = 64
_BYTES_PER_ITEM = 1024
_BYTES_SLACK = 1 << 20
#: The most tokens one request may be said to cost: a count above it is not believed
#: (summed over a call, it must still fit the status view's bigint, and its cost a float).
_MAX_PROMPT_TOKENS = 2**31 - 1


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


# --------------------------------------------------------------------------- answers


def answer_bytes(count: int, dimension: int) -> int:
    """The most bytes an answer of ``count`` vectors of ``dimension`` numbers may take."""
    return _BYTES_SLACK + count * (dimension * _BYTES_PER_NUMBER + _BYTES_PER_ITEM)


def read_bounded(response: httpx.Response, limit: int, deadline: float) -> tuple[bytes, bool]:
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


def deferral(response: httpx.Response) -> float | None:
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


def provider_message(status: int, content: bytes, redact: Callable[[str], str]) -> str:
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


def parse_answer(
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
