"""Bounds shared by every way in (Python API, CLI, HTTP), so they cannot drift apart.

A module of constants and checks with no imports of the rest of the package, so that
the layers above (``store``, ``http``, ``app``, ``cli``) can all depend on it without
making an import circle.
"""

from __future__ import annotations

from indexer.exceptions import InvalidInput

#: Rows one search may return.
MAX_K = 1000
#: Texts in one /embed request.
MAX_TEXTS = 256
#: Characters in one text (or /search query) sent over HTTP; the model reads 256 tokens.
MAX_TEXT_CHARS = 100_000
#: Characters of each row's content a search returns unless told otherwise.
CONTENT_CHARS = 1000


def check_k(k: int, name: str = "k") -> int:
    """``k`` itself, or InvalidInput naming the option (``-k`` in the CLI)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"{name} must be an integer between 1 and {MAX_K}")
    return k


#: Passages (best chunks) each document of a document search may carry.
MAX_PASSAGES = 20


def check_passages(passages: int, name: str = "passages") -> int:
    """``passages`` itself, or InvalidInput naming the option (``--passages`` in the CLI)."""
    if (
        isinstance(passages, bool)
        or not isinstance(passages, int)
        or not 1 <= passages <= MAX_PASSAGES
    ):
        raise InvalidInput(f"{name} must be an integer between 1 and {MAX_PASSAGES}")
    return passages
