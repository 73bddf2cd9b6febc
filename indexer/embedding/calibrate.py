"""Per-channel activation ranges of the fp32 graph, for smoothing the int8 variant.

:mod:`indexer.embedding.quantize` divides some activations by a per-channel factor (and
multiplies the weight rows that read them by the same factor) so that one scale per
token fits every channel of the token better; the factor comes from how large each
channel gets.  That is measured here, on the fp32 graph itself, with no text at all:
a few sequences of token ids drawn from the whole vocabulary by a fixed-seed generator.
The channels that run large in a BERT's hidden states (its "outlier" dimensions) do so
for nearly any input: on 628 texts of the bench corpus, factors taken from random ids
made int8 vectors as close to fp32 as factors taken from the Python documentation
(lowest cosine 0.9979 against 0.9981), so the build needs no calibration corpus and
stays reproducible.

The maxima go through ONNX Runtime's fp32 kernels, whose last bits may differ between
versions or CPUs; the smoothing rounds each factor to a power of two, so such
differences change the built graph only when a factor sits on a rounding boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.exceptions import ModelNotFound, first_line

__all__ = ["CALIBRATION_SEED", "channel_maxima"]

#: Seed of the token ids (numpy's legacy generator, whose stream never changes).
CALIBRATION_SEED = 20261204
#: Sequences of :data:`_TOKENS` ids each, one model call: about 0.2 s on one core.
_SEQUENCES, _TOKENS = 16, 128
_IDS_INPUT = "input_ids"


def _vocabulary_size(model: Any) -> int:
    """Rows of the table the ``input_ids`` are looked up in."""
    tables = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == _IDS_INPUT:
            table = tables.get(node.input[0])
            if table is not None and len(table.dims) == 2:
                return int(table.dims[0])
    raise ModelNotFound("the graph has no embedding table that input_ids index")


def _positions(model: Any) -> int:
    """Rows of the position table (:data:`_TOKENS` if the graph names none)."""
    for table in model.graph.initializer:
        if table.name.endswith("position_embeddings.weight") and len(table.dims) == 2:
            return int(table.dims[0])
    return _TOKENS


def calibration_ids(vocabulary: int, tokens: int = _TOKENS) -> npt.NDArray[np.int64]:
    """The token ids the maxima are measured on: [sequences, tokens], fixed forever."""
    rng = np.random.RandomState(CALIBRATION_SEED)
    return rng.randint(0, vocabulary, size=(_SEQUENCES, tokens)).astype(np.int64)


def channel_maxima(model: Any, tensors: Sequence[str]) -> dict[str, npt.NDArray[np.float64]]:
    """The largest ``|value|`` of every channel (last axis) of each of ``tensors``.

    ``model`` is an fp32 ``onnx.ModelProto`` with the graph contract of
    :mod:`indexer.embedding.bert`; it is copied, not changed.  Raises
    :class:`ModelNotFound` if ONNX Runtime cannot run the copy.
    """
    import onnx
    import onnxruntime as ort

    if not tensors:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(name) for name in tensors if name not in known
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # a probe, not the user's session: no optimiser notes
    # A model with fewer positions (a small test model) gets shorter sequences.
    ids = calibration_ids(_vocabulary_size(model), min(_TOKENS, _positions(model)))
    feed: dict[str, npt.NDArray[np.int64]] = {_IDS_INPUT: ids, "attention_mask": np.ones_like(ids)}
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        if "token_type_ids" in {i.name for i in session.get_inputs()}:
            feed["token_type_ids"] = np.zeros_like(ids)
        outputs = session.run(list(tensors), feed)
    except Exception as exc:
        reason = first_line(exc)
        raise ModelNotFound(f"ONNX Runtime could not calibrate the graph: {reason}") from exc
    maxima: dict[str, npt.NDArray[np.float64]] = {}
    for name, value in zip(tensors, outputs, strict=True):
        array = np.abs(np.asarray(value, dtype=np.float64))
        maxima[name] = array.reshape(-1, array.shape[-1]).max(axis=0)
    return maxima
