"""A remote model's configuration (:class:`RemoteConfig`: where its server is, what
decides its vectors, how requests are cut) and what a call to it yields
(:class:`RemoteBatch`, :class:`Usage`, :class:`RemoteTokenized`); see
:mod:`indexer.embedding.remote`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from indexer.embedding.tokens import Tokenized
from indexer.exceptions import ConfigurationError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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
    units per million tokens) is only for cost accounting.  ``tokenizer``: the path of
    the model's own ``tokenizer.json`` (Hugging Face's format), on every machine that
    runs a daemon; given, tokens are counted with it, exactly, instead of estimated
    from bytes (requests hold more texts, and truncation keeps more of each).

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
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        # A trailing slash would make "{url}/embeddings" a different URL (and another
        # fingerprint) for the same endpoint.
        object.__setattr__(self, "url", _checked_url(self.url).rstrip("/"))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigurationError("remote model: model must be a non-empty string")
        _check_int("dimension", self.dimension, 1)
        _check_key_env(self.api_key_env)
        check_number("timeout_s", self.timeout_s, positive=True)
        _check_int("inputs_per_request", self.inputs_per_request, 1)
        _check_int("tokens_per_request", self.tokens_per_request, 1)
        if self.max_input_tokens is not None:
            _check_int("max_input_tokens", self.max_input_tokens, 1)
        _check_int("in_flight", self.in_flight, 1)
        for name in ("query_prefix", "document_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ConfigurationError(f"remote model: {name} must be a string")
        if self.price_per_million is not None:
            check_number("price_per_million", self.price_per_million, positive=False)
        if self.tokenizer is not None and (
            not isinstance(self.tokenizer, str) or not self.tokenizer.strip()
        ):
            raise ConfigurationError("remote model: tokenizer must be the path of a file")

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
        if self.tokenizer is not None and self.max_input_tokens is not None:
            # It decides where a long input is cut, hence its vector.
            deciding["tokenizer"] = self.tokenizer
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


def check_number(name: str, value: object, *, positive: bool) -> None:
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


def fit_tokens(
    text: str, offsets: Sequence[tuple[int, int]], limit: int | None
) -> tuple[str, int, bool]:
    """``text`` cut to ``limit`` tokens by a tokenizer's ``offsets`` (its tokens'
    character spans): the input, its tokens, and whether it was cut."""
    if limit is None or len(offsets) <= limit:
        return text, len(offsets), False
    return text[: offsets[limit - 1][1]], limit, True


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


def fit(text: str, limit: int | None) -> tuple[str, int, bool]:
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
