"""Text -> 384-dimensional unit vectors with all-MiniLM-L6-v2 on ONNX Runtime.

No PyTorch: :mod:`indexer.embedding.model` supplies an ONNX graph (converted once from the
packaged safetensors weights) and ``tokenizer.json``; this module tokenises with
``tokenizers``, batches by a token budget and runs the graph with ``onnxruntime``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.embedding.model import resolve_model
from indexer.embedding.tokens import Tokenized, plan_calls
from indexer.exceptions import ConfigurationError, EmbeddingError, ModelNotFound
from indexer.settings import Settings

__all__ = ["MAX_POSITIONS", "Embedder"]

#: BERT's position table has 512 rows: no text can be longer, [CLS]/[SEP] included.
MAX_POSITIONS = 512
_REQUIRED_INPUTS = ("input_ids", "attention_mask")
_OPTIONAL_INPUTS = ("token_type_ids",)


def default_cache_dir() -> Path:
    """Where converted ONNX graphs are cached unless told otherwise."""
    import platformdirs

    return platformdirs.user_cache_path("indexer") / "models"


def _default_threads() -> int:
    # The CPUs this process may run on (a container or taskset may allow fewer
    # than os.cpu_count()); os.cpu_count() where affinity is unknown.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Embedder:
    """Embeds texts as L2-normalised float32 vectors (cosine = dot product).

    Thread safety: one Embedder may be shared by several threads.  After
    ``__init__`` nothing mutates it: ``tokenizers`` encodes without touching the
    tokenizer's configuration and an ONNX Runtime session's ``run`` is thread-safe.
    Concurrent calls share the session's intra-op thread pool, so they do not run
    faster than one after the other; each call allocates its own batch buffers.

    ``variant="int8"`` runs the opt-in int8 graph (:mod:`indexer.embedding.quantize`) instead of
    the fp32 one; :attr:`name` then ends in ``-int8``.
    """

    dim: int
    name: str
    max_tokens: int
    token_budget: int

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        cache_dir: Path | None = None,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        max_tokens: int = 256,
        token_budget: int = 2048,
        variant: str = "fp32",
        max_chars: int | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if isinstance(providers, str):
            providers = (providers,)
        available = list(ort.get_available_providers())
        if not providers:
            raise ConfigurationError(
                f"no execution provider given; available: {', '.join(available)}"
            )
        for provider in providers:
            if provider not in available:
                raise ConfigurationError(
                    f"execution provider {provider} is not available; "
                    f"available: {', '.join(available)}"
                )
        if not 2 <= max_tokens <= MAX_POSITIONS:
            raise ConfigurationError(
                f"max_tokens must be between 2 and {MAX_POSITIONS}, not {max_tokens}"
            )
        if token_budget < 1:
            raise ConfigurationError(f"token_budget must be at least 1, not {token_budget}")
        if max_chars is not None and max_chars < 1:
            raise ConfigurationError(f"max_chars must be at least 1, not {max_chars}")
        self.max_chars = max_chars
        if threads is None:
            threads = _default_threads()
        elif threads < 1:
            raise ConfigurationError(f"threads must be at least 1, not {threads}")

        files = resolve_model(
            model_dir, cache_dir if cache_dir is not None else default_cache_dir(), variant
        )
        self.name = files.name
        self.max_tokens = max_tokens
        self.token_budget = token_budget

        try:
            tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
        except Exception as exc:
            raise ModelNotFound(f"cannot load {files.tokenizer_path}: {exc}") from exc
        # The shipped tokenizer.json truncates at 128 and pads to a fixed 128; we
        # truncate at max_tokens ([CLS]/[SEP] included) and pad per batch ourselves.
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.no_padding()
        self._tokenizer = tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # CPU memory arena: ON, shrunk at the end of every embed() call.  Measured
        # here (2 cores, 200 texts of ~250 tokens, token_budget 8192; the process
        # holds ~235 MB after loading the model):
        #   arena on:          peak 556 MB, still 556 MB after the call, 8.6-9.4 CPU-s/100 texts
        #   arena on + shrink: peak 532-555 MB, back to 215-240 MB,        8.7-9.2 CPU-s/100 texts
        #   arena off:         peak 612-668 MB, back to 230-320 MB,      14.8-15.0 CPU-s/100 texts
        # Without the arena every large intermediate is a fresh allocation: 1.6x the
        # CPU time and a higher peak, not a lower one.  With it, buffers are reused
        # across the batches of one call, and the shrink option on the call's last
        # run hands the memory back, so an idle daemon does not keep its largest
        # batch's buffers (wall-clock speed was the same within noise; CPU time
        # was measured because another workload shared the two cores).
        options.enable_cpu_mem_arena = True
        self._release_options: Any = ort.RunOptions()
        self._release_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        try:
            self._session = ort.InferenceSession(
                str(files.onnx_path), sess_options=options, providers=list(providers)
            )
        except Exception as exc:
            raise ModelNotFound(
                f"ONNX Runtime cannot load {files.onnx_path}: {_first_line(exc)}"
            ) from exc

        inputs = {i.name for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        unknown = inputs - set(_REQUIRED_INPUTS) - set(_OPTIONAL_INPUTS)
        if not set(_REQUIRED_INPUTS) <= inputs or unknown:
            raise ModelNotFound(
                f"{files.onnx_path} has inputs {sorted(inputs)}; expected input_ids and "
                "attention_mask (int64 [batch, sequence]) and optionally token_type_ids"
            )
        if "sentence_embedding" in outputs:
            self._output = "sentence_embedding"
            self._pool_here = False
        elif "last_hidden_state" in outputs:
            self._output = "last_hidden_state"
            self._pool_here = True
        else:
            raise ModelNotFound(
                f"{files.onnx_path} has outputs {outputs}; expected sentence_embedding "
                "(float32 [batch, dim], pooled and normalised) or last_hidden_state"
            )
        self._feed_token_types = "token_type_ids" in inputs
        self.dim = int(self._run(np.array([[0]], np.int64), np.array([[1]], np.int64)).shape[1])

    # ------------------------------------------------------------------ public

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text is embedded with: after truncation, [CLS]/[SEP] included."""
        return self.tokenize(texts).lengths

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Tokenize ``texts`` (in parallel, in Rust) for :meth:`embed_tokenized`."""
        texts = self._check_texts(texts)
        if self.max_chars is not None:
            # What the daemon reads of a row (its claim fetches max_chars characters),
            # so a text embedded here gets the vector the daemon would write.
            texts = [t[: self.max_chars] for t in texts]
        return Tokenized(tuple(texts), tuple(tuple(e.ids) for e in self._encode(texts)))

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts``: float32 array of shape (len(texts), dim), rows in input order.

        The same as ``embed_tokenized(tokenize(texts))``.
        """
        return self.embed_tokenized(self.tokenize(texts))

    def embed_tokenized(self, tokenized: Tokenized) -> npt.NDArray[np.float32]:
        """Embed tokenized texts: float32 array (len(tokenized), dim), in input order.

        Texts are sorted by token count and run in model calls planned by
        :func:`~indexer.embedding.tokens.plan_calls`, each padded only to its own
        longest text, so a call never holds more than ``max(token_budget, max_tokens)``
        tokens (which bounds memory: a text longer than the budget gets a call of its
        own).
        Raises :class:`EmbeddingError` if the model fails or yields a non-finite value.
        """
        result = np.empty((len(tokenized), self.dim), dtype=np.float32)
        lengths = tokenized.lengths
        batches = plan_calls(lengths, self.token_budget)
        for number, batch in enumerate(batches, start=1):
            width = max(lengths[i] for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, index in enumerate(batch):
                ids[row, : lengths[index]] = tokenized.ids[index]
                mask[row, : lengths[index]] = 1
            last = number == len(batches)
            result[batch] = self._run(ids, mask, self._release_options if last else None)
        finite = np.isfinite(result).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite).tolist()
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            raise EmbeddingError(
                f"the model produced non-finite values for {len(bad)} of {len(tokenized)} "
                f"texts (input positions {shown})"
            )
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

    def _run(
        self,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        run_options: Any = None,
    ) -> npt.NDArray[np.float32]:
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._feed_token_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        try:
            (output,) = self._session.run([self._output], feed, run_options)
        except Exception as exc:
            raise EmbeddingError(
                f"ONNX Runtime failed on a batch of {ids.shape[0]} x {ids.shape[1]} tokens: "
                f"{_first_line(exc)}"
            ) from exc
        out: npt.NDArray[np.float32] = np.asarray(output, dtype=np.float32)
        if not self._pool_here:
            return out
        # last_hidden_state [batch, seq, dim]: mean-pool over the mask, L2-normalise.
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (out * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        normalised: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return normalised


def load_embedder(settings: Settings) -> Embedder:
    """The embedder the settings describe (model, variant, threads, provider, budget)."""
    return Embedder(
        settings.model_dir,
        cache_dir=settings.model_cache,
        threads=settings.threads or None,
        providers=(settings.provider,),
        token_budget=settings.token_budget,
        variant=settings.model_variant,
        max_chars=settings.max_chars,
    )
