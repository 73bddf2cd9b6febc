"""The ONNX Runtime session behind an :class:`~indexer.embedding.embedder.Embedder`.

:class:`ModelSession` owns what is fixed once a graph is loaded: the session and its
options, which outputs the graph offers (pooled ``sentence_embedding``, or a raw
``last_hidden_state`` pooled here as the model's description says), whether it takes
``token_type_ids``, and the run
option that hands the memory arena back.  Nothing in it changes after ``__init__``,
so one instance serves several threads.  ``onnxruntime`` is imported when a session
is opened, not when the package is, so a caller that never embeds never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.embedding.graph import Pooling
from indexer.exceptions import ConfigurationError, EmbeddingError, ModelNotFound, first_line

__all__ = ["ModelSession", "check_providers", "default_threads", "pool_hidden_states"]

_REQUIRED_INPUTS = ("input_ids", "attention_mask")
_OPTIONAL_INPUTS = ("token_type_ids",)
_POOLED_OUTPUT = "sentence_embedding"
_HIDDEN_OUTPUT = "last_hidden_state"


def default_threads() -> int:
    """The CPUs this process may run on, one intra-op thread each.

    A container or taskset may allow fewer than ``os.cpu_count()``; that count is
    used only where the affinity is unknown.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_providers(providers: Sequence[str]) -> list[str]:
    """``providers`` as a list, if ONNX Runtime has every one of them here."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    if not providers:
        raise ConfigurationError(f"no execution provider given; available: {', '.join(available)}")
    for provider in providers:
        if provider not in available:
            raise ConfigurationError(
                f"execution provider {provider} is not available; available: {', '.join(available)}"
            )
    return list(providers)


def _session_options(threads: int, spin: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        # Idle threads sleep at once instead of spinning for the next call.  A session
        # beside another in one process (a model filled in the background beside the
        # active one) would otherwise take the cores the other's calls, the searches and
        # PostgreSQL need: the model switch bench on 2 cores measured INSERT ->
        # searchable during a fill at 1.34x idle with it, 2.22x without, and the fill at
        # 329 chunks/s instead of 230.  Alone, a session is faster spinning (fp32 2-3%,
        # int8 7-11% measured), so only such a second session does without.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # CPU memory arena: ON, shrunk after the last model call of every embed() call.
    # Measured here (2 cores, 200 texts of ~250 tokens, token_budget 8192; the
    # process holds ~235 MB after loading the model):
    #   arena on:          peak 556 MB, still 556 MB after the call, 8.6-9.4 CPU-s/100 texts
    #   arena on + shrink: peak 532-555 MB, back to 215-240 MB,        8.7-9.2 CPU-s/100 texts
    #   arena off:         peak 612-668 MB, back to 230-320 MB,      14.8-15.0 CPU-s/100 texts
    # Without the arena every large intermediate is a fresh allocation: 1.6x the
    # CPU time and a higher peak, not a lower one.  With it, buffers are reused
    # across the model calls of one embed() call, and the shrink option on its last
    # model call hands the memory back, so an idle daemon does not keep its largest
    # model call's buffers (wall-clock speed was the same within noise; CPU time
    # was measured because another workload shared the two cores).
    options.enable_cpu_mem_arena = True
    return options


def _release_options() -> Any:
    import onnxruntime as ort

    release = ort.RunOptions()
    release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return release


class ModelSession:
    """One loaded graph: runs a model call and returns its vectors [texts, dim].

    ``pooling`` and ``normalize`` apply only to a graph whose output is
    ``last_hidden_state``; a ``sentence_embedding`` output is already pooled.
    """

    dim: int

    def __init__(
        self,
        onnx_path: Path,
        threads: int,
        providers: Sequence[str],
        *,
        pooling: Pooling = "mean",
        normalize: bool = True,
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort

        self._pooling: Pooling = pooling
        self._normalize = normalize
        self._release = _release_options()
        try:
            self._session = ort.InferenceSession(
                str(onnx_path),
                sess_options=_session_options(threads, spin),
                providers=list(providers),
            )
        except Exception as exc:
            raise ModelNotFound(f"ONNX Runtime cannot load {onnx_path}: {first_line(exc)}") from exc
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        unknown = inputs - set(_REQUIRED_INPUTS) - set(_OPTIONAL_INPUTS)
        if not set(_REQUIRED_INPUTS) <= inputs or unknown:
            raise ModelNotFound(
                f"{onnx_path} has inputs {sorted(inputs)}; expected input_ids and "
                "attention_mask (int64 [batch, sequence]) and optionally token_type_ids"
            )
        if _POOLED_OUTPUT in outputs:
            self._output, self._pool_here = _POOLED_OUTPUT, False
        elif _HIDDEN_OUTPUT in outputs:
            self._output, self._pool_here = _HIDDEN_OUTPUT, True
        else:
            raise ModelNotFound(
                f"{onnx_path} has outputs {outputs}; expected sentence_embedding "
                "(float32 [batch, dim], pooled) or last_hidden_state"
            )
        self._feed_token_types = "token_type_ids" in inputs
        self.dim = int(self.run(np.array([[0]], np.int64), np.array([[1]], np.int64)).shape[1])

    def run(
        self,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        *,
        release_memory: bool = False,
    ) -> npt.NDArray[np.float32]:
        """One model call on padded ``ids`` and their ``mask`` ([texts, tokens] each).

        ``release_memory`` shrinks the arena afterwards: for the last model call of a
        run of them, so the buffers they shared are not kept while idle.
        """
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._feed_token_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        run_options = self._release if release_memory else None
        try:
            (output,) = self._session.run([self._output], feed, run_options)
        except Exception as exc:
            raise EmbeddingError(
                f"ONNX Runtime failed on a model call of {ids.shape[0]} x {ids.shape[1]} "
                f"tokens: {first_line(exc)}"
            ) from exc
        out: npt.NDArray[np.float32] = np.asarray(output, dtype=np.float32)
        if not self._pool_here:
            return out
        return pool_hidden_states(out, mask, self._pooling, self._normalize)


def pool_hidden_states(
    hidden: npt.NDArray[np.float32],
    mask: npt.NDArray[np.int64],
    pooling: Pooling,
    normalize: bool,
) -> npt.NDArray[np.float32]:
    """What a built graph does inside, for a graph that stops at last_hidden_state."""
    if pooling == "cls":
        pooled = hidden[:, 0, :]
    else:
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled = pooled / np.maximum(norms, 1e-12)
    result: npt.NDArray[np.float32] = np.ascontiguousarray(pooled, dtype=np.float32)
    return result
