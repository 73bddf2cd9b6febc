"""Part of section 1: the opt-in int8 variant beside fp32, beyond speed and cosines.

Two figures, measured on the corpus the model section already has:

- **batch independence**: :data:`BATCH_TEXTS` texts (three fifths short lines, two
  fifths chunks) embedded one at a time, then in shuffled batches of 8 and of 64, each
  batch one model call padded to its longest text; the largest absolute difference
  between two vectors of the same text.  The int8 graph is built for 0 (a text's vector
  depends on nothing else); fp32 is measured too, for scale (its pooled sums move with
  padding in the last bits);
- **neighbours**: each corpus query against the short lines and chunks, exact top 10
  by cosine; int8's recall of fp32's result: @1, whether fp32's first text is int8's
  first, and @10, the share of fp32's top 10 in int8's top 10.  (Known-item recall on
  the project's man-page corpus is ``benchmarks/int8_quality.py --quality``: it needs
  ``man`` and minutes.)
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from indexer.bench.common import SEED, TOP_K, Floats
from indexer.bench.corpus import Corpus
from indexer.embedding import Embedder, load_embedder
from indexer.settings import Settings

#: Texts of the batch check (full run); ``--quick`` takes fewer.
BATCH_TEXTS = 100
BATCH_SIZES = (8, 64)


def batch_texts(corpus: Corpus, count: int) -> list[str]:
    """``count`` texts: three fifths short lines, the rest chunks (as many as there are)."""
    short = corpus.short[: count * 3 // 5]
    return short + corpus.mixed[: count - len(short)]


def one_call_per_batch(settings: Settings, variant: str) -> Embedder:
    """The configured model (``variant``), with a token budget that runs any batch of
    the check as one model call, so that a text is padded to its batch's longest."""
    budget = max(BATCH_SIZES) * 256
    return load_embedder(dataclasses.replace(settings, model_variant=variant, token_budget=budget))


def batch_difference(embed: Callable[[list[str]], Floats], texts: Sequence[str]) -> float:
    """Largest ``|alone - batched|`` over ``texts`` in shuffled batches of each size."""
    alone = np.stack([embed([text])[0] for text in texts])
    rng = random.Random(SEED)
    worst = 0.0
    for size in BATCH_SIZES:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order), size):
            chosen = order[start : start + size]
            batched = embed([texts[i] for i in chosen])
            worst = max(worst, float(np.abs(batched - alone[chosen]).max()))
    return worst


def _top(queries: Floats, documents: Floats, k: int) -> list[set[int]]:
    order = np.argsort(-(queries @ documents.T), axis=1, kind="stable")[:, :k]
    return [set(row.tolist()) for row in order]


def neighbour_recall(fp32: tuple[Floats, Floats], int8: tuple[Floats, Floats]) -> dict[str, float]:
    """int8's recall@1 and @10 of fp32's exact top-k; each pair is (queries, documents)."""
    truth_1, found_1 = _top(*fp32, 1), _top(*int8, 1)
    truth, found = _top(*fp32, TOP_K), _top(*int8, TOP_K)
    pairs_1 = zip(truth_1, found_1, strict=True)
    pairs = zip(truth, found, strict=True)
    return {
        "queries": len(truth),
        "recall_at_1": round(float(np.mean([t == f for t, f in pairs_1])), 4),
        "recall_at_10": round(float(np.mean([len(t & f) / TOP_K for t, f in pairs])), 4),
    }


def variant_figures(
    settings: Settings, corpus: Corpus, count: int, documents: tuple[Floats, Floats]
) -> dict[str, Any]:
    """Batch independence of fp32 and int8, and int8's neighbour recall.

    ``documents`` are the fp32 and int8 vectors of ``corpus.short + corpus.mixed``.
    """
    texts = batch_texts(corpus, count)
    diffs: dict[str, float] = {}
    queries: dict[str, Floats] = {}
    for variant in ("fp32", "int8"):
        embedder = one_call_per_batch(settings, variant)
        diffs[variant] = batch_difference(embedder.embed, texts)
        queries[variant] = embedder.embed(corpus.queries)
        del embedder  # one large session at a time
    return {
        "batch_texts": len(texts),
        "batch_sizes": list(BATCH_SIZES),
        "batch_max_abs_diff": diffs["int8"],
        "fp32_batch_max_abs_diff": diffs["fp32"],
        "neighbours": neighbour_recall(
            (queries["fp32"], documents[0]), (queries["int8"], documents[1])
        ),
    }
