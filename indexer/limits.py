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
#: Inputs in one /v1/embeddings request: the bound of the API it imitates, so that a
#: client written for it never batches more than the server takes.
MAX_INPUTS = 2048
#: Characters in one text (or /search query) sent over HTTP; the model reads 256 tokens.
MAX_TEXT_CHARS = 100_000
#: Characters of each row's content a search returns unless told otherwise.
CONTENT_CHARS = 1000
#: Characters one chunk of a document holds at most (``INDEXER_CHUNK_MAX_CHARS``), however
#: few tokens they are: a word the tokenizer cannot split (1,000,000 letters without a
#: space are one ``[UNK]``) would otherwise be one chunk of any length.  Measured with
#: ``benchmarks/chunk_chars.py`` (characters from the first to the last token of every
#: window of consecutive tokens): the largest 200-token window of English man pages as a
#: terminal shows them was 2,305 characters (4.65 a token on average; 2,885 for 254
#: tokens), of Python source 1,388, of localized man pages (CJK, Cyrillic, Latin) 1,382, of
#: Python's documentation topics 1,077, of URLs 564.  Only man pages rendered 4,000 columns
#: wide pass 8,192: tables as wide as their longest cell, whose box-drawing lines are one
#: ``[UNK]`` each (320 of 951,045 windows; 17 of their 11,221 chunks at 128 tokens).
CHUNK_MAX_CHARS = 8192
#: The smallest bound a chunk may be given: the chunker reads a longer word as pieces of a
#: quarter of the bound, and a window must hold at least one.
MIN_CHUNK_CHARS = 16


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
