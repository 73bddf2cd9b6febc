"""The model calls of a row batch, and how a bad text is found among them.

A local model is called in-process; a remote model (:mod:`indexer.embedding.remote`)
answers each input on its own, so its bad inputs come back named, with what the batch
cost (tokens, requests, retries, deferrals), which the batch's event records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.embedding import TextEmbedder, Tokenized
from indexer.embedding.remote import ProviderError, RemoteEmbedder, Usage
from indexer.exceptions import EmbeddingError
from indexer.store import ClaimedRow

logger = logging.getLogger(__name__)

Groups = Sequence[list[ClaimedRow]]


@dataclass
class Embedded:
    """A batch's vectors (one per group of rows with equal text), the groups that failed
    with their error, and, for a remote model, what the provider reported."""

    good: list[tuple[list[ClaimedRow], np.ndarray]]
    bad: list[tuple[list[ClaimedRow], str]]
    detail: dict[str, Any] = field(default_factory=dict)


#: How long background work (a model's fill) waits on its remote server's deferrals,
#: and how often it retries a failing one, before it gives the work back: the active
#: model's new rows wait behind it (the rows' own work waits the embedder's patience).
BACKGROUND_PATIENCE_S = 5.0
BACKGROUND_RETRIES = 2


def embed_groups(
    embedder: TextEmbedder, groups: Groups, tokenized: Tokenized, *, background: bool = False
) -> Embedded:
    """Embed texts (one per group of rows).  A remote model's server being away raises
    :class:`~indexer.exceptions.ProviderAway` (the caller gives the work back), sooner
    for ``background`` work."""
    if isinstance(embedder, RemoteEmbedder):
        return _embed_remote(embedder, groups, tokenized, background)
    good, bad = embed_isolating(embedder, groups, tokenized)
    return Embedded(good, bad)


def provider_detail(embedder: RemoteEmbedder, usage: Usage) -> dict[str, Any]:
    """What an event records of a remote model's batch (``detail.provider``)."""
    return {
        "provider": {
            "prompt_tokens": usage.prompt_tokens,
            "estimated_tokens": usage.estimated_tokens,
            "requests": usage.requests,
            "retries": usage.retries,
            "deferrals": usage.deferrals,
            "truncated": usage.truncated,
            "cost": usage.cost(embedder.config.price_per_million),
        }
    }


def _embed_remote(
    embedder: RemoteEmbedder, groups: Groups, tokenized: Tokenized, background: bool
) -> Embedded:
    try:
        if background:
            batch = embedder.embed_partial(
                tokenized, patience_s=BACKGROUND_PATIENCE_S, retries=BACKGROUND_RETRIES
            )
        else:
            batch = embedder.embed_partial(tokenized)
    except ProviderError as exc:
        # A bad answer (wrong count or dimension, NaN, malformed): an error for the whole
        # batch, never a written vector.
        logger.warning("model %s answered badly for %d texts: %s", embedder.name, len(groups), exc)
        return Embedded([], [(g, str(exc)) for g in groups])
    good = [(g, batch.vectors[i]) for i, g in enumerate(groups) if i not in batch.errors]
    bad = [(groups[i], message) for i, message in sorted(batch.errors.items())]
    for group, message in bad:
        logger.warning(
            "row %s refused by model %s: %s",
            ", ".join(str(r.id) for r in group),
            embedder.name,
            message,
        )
    return Embedded(good, bad, provider_detail(embedder, batch.usage))


def embed_isolating(
    embedder: TextEmbedder, groups: Groups, tokenized: Tokenized
) -> tuple[list[tuple[list[ClaimedRow], np.ndarray]], list[tuple[list[ClaimedRow], str]]]:
    """Embed texts (one per group of rows); when the model fails, split the batch
    to find the bad texts.

    A batch with one bad text costs about 2*log2(n) extra model calls, and the
    good texts are still embedded in this pass.
    """
    try:
        vectors = embedder.embed_tokenized(tokenized)
    except Exception as exc:  # any model failure is a property of some text(s)
        if len(groups) == 1:
            message = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, EmbeddingError) else str(exc)
            )
            ids = ", ".join(str(r.id) for r in groups[0])
            logger.warning("row %s failed to embed: %s", ids, message)
            return [], [(groups[0], message)]
        middle = len(groups) // 2
        good_a, bad_a = embed_isolating(embedder, groups[:middle], tokenized.select(range(middle)))
        good_b, bad_b = embed_isolating(
            embedder, groups[middle:], tokenized.select(range(middle, len(groups)))
        )
        return good_a + good_b, bad_a + bad_b
    return list(zip(groups, vectors, strict=True)), []
