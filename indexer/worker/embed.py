"""The model calls of a row batch, and how a bad text is found among them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from indexer.embedding import TextEmbedder, Tokenized
from indexer.exceptions import EmbeddingError
from indexer.store import ClaimedRow

logger = logging.getLogger(__name__)


def embed_isolating(
    embedder: TextEmbedder, groups: Sequence[list[ClaimedRow]], tokenized: Tokenized
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
