"""Text -> vectors on ONNX Runtime: all-MiniLM-L6-v2 by default, or any described model.

No PyTorch.  The :class:`Embedder` opens a model in four steps that read forward:
describe it (:mod:`indexer.embedding.describe`: a frozen record and its fingerprint),
locate its files and convert them to an ONNX graph, cached
(:mod:`indexer.embedding.resolve`), then open the graph in a
:class:`~indexer.embedding.session.ModelSession` and its ``tokenizer.json`` with
``tokenizers``.  Texts get the record's prefix (query or document), are truncated at
its max tokens, grouped into model calls under a token budget and pooled as it says.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.embedding.describe import MAX_POSITIONS, ModelRecord, describe
from indexer.embedding.resolve import convert, locate
from indexer.embedding.session import ModelSession, check_providers, default_threads
from indexer.embedding.tokens import Tokenized, plan_calls
from indexer.exceptions import ConfigurationError, EmbeddingError, ModelNotFound, first_line
from indexer.settings import Settings, default_model_cache

__all__ = ["MAX_POSITIONS", "Embedder", "load_embedder"]

_SHOWN_POSITIONS = 10  # input positions named in a non-finite-output error


class Embedder:
    """Embeds texts as float32 vectors: documents with :meth:`embed`, queries with
    :meth:`embed_queries` (they differ only for a model with prefixes).

    What it runs is a :class:`~indexer.embedding.describe.ModelRecord`: ``record``, or
    the one described from ``model_dir`` (None: the packaged all-MiniLM-L6-v2).  Its
    vectors are L2-normalised (cosine = dot product) unless the record says otherwise.
    ``max_tokens`` and ``variant`` (None: the record's) replace the record's own.

    Thread safety: one Embedder may be shared by several threads.  After
    ``__init__`` nothing mutates it: ``tokenizers`` encodes without touching the
    tokenizer's configuration and an ONNX Runtime session's ``run`` is thread-safe.
    Concurrent calls share the session's intra-op thread pool, so they do not run
    faster than one after the other; each call allocates its own input buffers.

    ``variant="int8"`` runs the opt-in int8 graph (:mod:`indexer.embedding.quantize`) instead of
    the fp32 one; :attr:`name` then ends in ``-int8``.  ``max_chars`` cuts every text
    to that many characters before tokenizing, as the daemon's claim does.
    ``spin=False`` lets the session's idle threads sleep at once: for a second model in
    the same process (see :func:`~indexer.embedding.session._session_options`).
    """

    dim: int
    name: str
    record: ModelRecord
    max_tokens: int
    token_budget: int
    max_chars: int | None

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        record: ModelRecord | None = None,
        cache_dir: Path | None = None,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        max_tokens: int | None = None,
        token_budget: int = 2048,
        variant: str | None = None,
        max_chars: int | None = None,
        spin: bool = True,
    ) -> None:
        if isinstance(providers, str):
            providers = (providers,)
        provider_list = check_providers(providers)
        threads = _check_settings(max_tokens, token_budget, max_chars, threads)
        # 1. describe
        if record is None:
            record = describe(model_dir, variant=variant or "fp32", max_tokens=max_tokens)
        elif model_dir is not None:
            raise ConfigurationError("give the Embedder a model folder or a record, not both")
        else:
            record = record.with_options(max_tokens=max_tokens, variant=variant)
        # 2. locate, 3. convert
        located = locate(record)
        cache = cache_dir if cache_dir is not None else default_model_cache()
        onnx_path = convert(record, located, cache)
        # 4. open
        self.record = record
        self.name = record.label
        self.max_tokens = record.max_tokens
        self.token_budget = token_budget
        self.max_chars = max_chars
        self._files = (onnx_path, located.tokenizer)
        self._tokenizer = _load_tokenizer(located.tokenizer, record.max_tokens)
        self._model = ModelSession(
            onnx_path,
            threads,
            provider_list,
            pooling=record.pooling,
            normalize=record.normalize,
            spin=spin,
        )
        self.dim = self._model.dim
        if self.dim != record.dimension:
            raise ModelNotFound(
                f"{onnx_path} makes {self.dim}-dimensional vectors; model {record.name} "
                f"is described with {record.dimension}"
            )

    # ------------------------------------------------------------------ public

    @functools.cached_property
    def cache_key(self) -> str:
        """What a cached vector must have been computed with to be reused here: the
        name (``-int8`` for that variant), max tokens, and a digest of what decides the
        vectors, so that no other model, variant, truncation or prefix ever shares one.

        A model without prefixes, mean-pooled and normalised, is keyed as every earlier
        release keyed it (a digest of the ONNX graph it runs and of ``tokenizer.json``,
        which then decide its vectors), so that the vectors already cached stay reusable
        across the upgrade; any other model by its record's fingerprint (weights,
        tokenizer, builder, pooling, normalisation, prefixes, variant).  Read once
        (about 0.1 s per 100 MB of graph), when first asked for.
        """
        record = self.record
        if (
            record.query_prefix
            or record.document_prefix
            or not (record.pooling == "mean" and record.normalize)
        ):
            return f"{self.name}:{self.max_tokens}:{record.fingerprint[:16]}"
        digest = hashlib.sha256()
        for path in self._files:
            with open(path, "rb") as file:
                digest.update(hashlib.file_digest(file, "sha256").digest())
        return f"{self.name}:{self.max_tokens}:{digest.hexdigest()[:16]}"

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text is embedded with as a document: after truncation, the
        document prefix and [CLS]/[SEP] included."""
        return self.tokenize(texts).lengths

    def tokenize(self, texts: Sequence[str], *, query: bool = False) -> Tokenized:
        """Tokenize ``texts`` (in parallel, in Rust) for :meth:`embed_tokenized`: as
        documents, or as queries (``query=True``), each after its prefix.

        :attr:`Tokenized.texts` keeps the texts without the prefix.
        """
        texts = self._check_texts(texts)
        if self.max_chars is not None:
            # What the daemon reads of a row (its claim fetches max_chars characters),
            # so a text embedded here gets the vector the daemon would write.
            texts = [t[: self.max_chars] for t in texts]
        prefix = self.record.query_prefix if query else self.record.document_prefix
        model_input = [prefix + t for t in texts] if prefix else texts
        return Tokenized(tuple(texts), tuple(tuple(e.ids) for e in self._encode(model_input)))

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of every content token of ``text``, in order:
        no [CLS]/[SEP], no truncation, no ``max_chars`` cut (what
        :func:`indexer.chunking.chunk_text` needs to cut a long text into windows).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        if not text:
            return []
        try:
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            # A lone surrogate, as in _encode; U+FFFD keeps every offset in place.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
        # The tokenizer truncates at max_tokens; what it cut off comes back as
        # overflowing encodings, in order, with offsets into the whole text.
        offsets: list[tuple[int, int]] = list(encoding.offsets)
        for piece in encoding.overflowing:
            offsets.extend(piece.offsets)
        return offsets

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` as documents: float32 array of shape (len(texts), dim), rows
        in input order.

        The same as ``embed_tokenized(tokenize(texts))``.
        """
        return self.embed_tokenized(self.tokenize(texts))

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` as search queries (with the model's query prefix): float32
        array of shape (len(texts), dim), rows in input order."""
        return self.embed_tokenized(self.tokenize(texts, query=True))

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        """Embed tokenized texts: float32 array (len(tokenized), dim), in input order.

        Texts are sorted by token count and run in model calls planned by
        :func:`~indexer.embedding.tokens.plan_calls`, each padded only to its own
        longest text, so a model call never holds more than ``max(token_budget,
        max_tokens)`` tokens (which bounds memory: a text longer than the budget gets
        a model call of its own).
        Raises :class:`EmbeddingError` if the model fails or yields a non-finite value.
        """
        result = np.empty((len(tokenized), self.dim), dtype=np.float32)
        calls = plan_calls(tokenized.lengths, self.token_budget)
        for number, call in enumerate(calls, start=1):
            ids, mask = _padded(tokenized, call)
            result[call] = self._model.run(ids, mask, release_memory=number == len(calls))
        _check_finite(result)
        return result

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string")
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{position}] is {type(text).__name__}, not str")
        return texts

    def _encode(self, texts: list[str]) -> list[Any]:
        if not texts:
            return []
        try:
            return list(self._tokenizer.encode_batch(texts, add_special_tokens=True))
        except TypeError:
            # A lone surrogate (e.g. from a lenient JSON decoder) cannot cross into
            # Rust: replace it with U+FFFD, which the BERT normaliser then drops.
            cleaned = [
                t.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for t in texts
            ]
            return list(self._tokenizer.encode_batch(cleaned, add_special_tokens=True))


def _check_settings(
    max_tokens: int | None, token_budget: int, max_chars: int | None, threads: int | None
) -> int:
    """Refuse impossible limits before any model file is touched; the thread count."""
    if max_tokens is not None and not 2 <= max_tokens <= MAX_POSITIONS:
        raise ConfigurationError(
            f"max_tokens must be between 2 and {MAX_POSITIONS}, not {max_tokens}"
        )
    if token_budget < 1:
        raise ConfigurationError(f"token_budget must be at least 1, not {token_budget}")
    if max_chars is not None and max_chars < 1:
        raise ConfigurationError(f"max_chars must be at least 1, not {max_chars}")
    if threads is None:
        return default_threads()
    if threads < 1:
        raise ConfigurationError(f"threads must be at least 1, not {threads}")
    return threads


def _load_tokenizer(path: Path, max_tokens: int) -> Any:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelNotFound(f"cannot load {path}: {first_line(exc)}") from exc
    # A tokenizer.json may truncate and pad on its own (MiniLM's: at 128, to a fixed
    # 128); we truncate at max_tokens ([CLS]/[SEP] included) and pad per model call.
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.no_padding()
    return tokenizer


def _padded(
    tokenized: Tokenized, call: Sequence[int]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Token ids and attention mask of one model call, padded to its longest text."""
    lengths = [len(tokenized.ids[i]) for i in call]
    ids = np.zeros((len(call), max(lengths)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, (index, length) in enumerate(zip(call, lengths, strict=True)):
        ids[row, :length] = tokenized.ids[index]
        mask[row, :length] = 1
    return ids, mask


def _check_finite(vectors: npt.NDArray[np.float32]) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    if finite.all():
        return
    bad = np.flatnonzero(~finite).tolist()
    shown = ", ".join(map(str, bad[:_SHOWN_POSITIONS]))
    more = ", ..." if len(bad) > _SHOWN_POSITIONS else ""
    raise EmbeddingError(
        f"the model produced non-finite values for {len(bad)} of {len(vectors)} "
        f"texts (input positions {shown}{more})"
    )


def load_embedder(settings: Settings, *, spin: bool = True) -> Embedder:
    """The embedder the settings name (model, variant, threads, provider, budget)."""
    return Embedder(
        settings.model_dir,
        cache_dir=settings.model_cache,
        threads=settings.threads or None,
        providers=(settings.provider,),
        token_budget=settings.token_budget,
        variant=settings.model_variant,
        max_chars=settings.max_chars,
        spin=spin,
    )


def load_query_embedder(settings: Settings) -> Embedder:
    """The settings' embedder as a searching process opens it: its idle threads sleep
    at once instead of spinning.

    A search embeds one short text, on the cores the daemon, PostgreSQL and the
    application share.  Measured on 2 cores, a 10-token query: spinning, 4.3 ms p50
    alone but 12.1 ms with one core busy elsewhere (its parallel operators wait for
    the thread that lost its core); not spinning, 6.1 ms alone and 6.3 ms with the core
    busy.  In the model switch bench (10,000 chunks), search p50 / p95 during a fill went
    from 1.85x / 1.30x to 1.05x / 1.28x of before the fill.  A daemon's own model keeps
    spinning: it embeds batches, and alone it is faster so (see
    :func:`~indexer.embedding.session._session_options`).
    """
    return load_embedder(settings, spin=False)
