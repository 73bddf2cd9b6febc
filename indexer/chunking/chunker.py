"""The windows: where each one ends and the next one starts, and the chunks they make
(see the decisions in :mod:`indexer.chunking`)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from indexer.chunking.buffer import OffsetTokenizer, TokenBuffer
from indexer.chunking.characters import (
    CJK_SENTENCE_ENDS,
    CLOSERS,
    NON_SPACE,
    PARAGRAPH,
    SENTENCE_ENDS,
    glued,
    splits_alone,
)
from indexer.exceptions import ConfigurationError
from indexer.limits import CHUNK_MAX_CHARS, MIN_CHUNK_CHARS

#: How far (in tokens) the start of a window may move back to reach a word's start.
MAX_WORD_TOKENS = 16

# Boundary kinds, best first.  A token break (beside a CJK character or a punctuation
# mark, no whitespace) is as safe for the tokenizer as a word break but reads worse.
_PARAGRAPH_BREAK = 4
_SENTENCE_BREAK = 3
_WORD_BREAK = 2
_TOKEN_BREAK = 1
_NO_BREAK = 0


@dataclass(frozen=True)
class Chunk:
    """One window of a document: ``document[start:end] == text``."""

    text: str
    start: int
    end: int
    position: int
    tokens: int


@dataclass(frozen=True)
class Chunking:
    """The chunks of a document, and whether ``max_chunks`` cut it short."""

    chunks: tuple[Chunk, ...]
    truncated: bool

    def __len__(self) -> int:
        return len(self.chunks)


def chunk_text(
    text: str,
    tokenizer: OffsetTokenizer,
    *,
    chunk_tokens: int,
    overlap_tokens: int,
    max_chunks: int | None = None,
    max_chars: int = CHUNK_MAX_CHARS,
) -> Chunking:
    """Cut ``text`` into windows of at most ``chunk_tokens`` tokens and ``max_chars``
    characters (see the module doc).

    ``overlap_tokens`` must be smaller than half of ``chunk_tokens`` (so every window
    moves the text forward); ``max_chunks``, if given, at least 1; ``max_chars`` at least
    :data:`MIN_CHUNK_CHARS`.  Raises :class:`~indexer.exceptions.ConfigurationError` for
    other values.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    _check(chunk_tokens, overlap_tokens, max_chunks)
    if isinstance(max_chars, bool) or not isinstance(max_chars, int):
        raise ConfigurationError(f"max_chars must be an integer, not {max_chars!r}")
    if max_chars < MIN_CHUNK_CHARS:
        raise ConfigurationError(f"max_chars must be at least {MIN_CHUNK_CHARS}, not {max_chars}")
    chunker = _Chunker(text, tokenizer, chunk_tokens, overlap_tokens, max_chunks, max_chars)
    return chunker.run()


def _check(chunk_tokens: int, overlap_tokens: int, max_chunks: int | None) -> None:
    if chunk_tokens < 1:
        raise ConfigurationError(f"chunk_tokens must be at least 1, not {chunk_tokens}")
    if not 0 <= overlap_tokens < max(1, (chunk_tokens + 1) // 2):
        raise ConfigurationError(
            f"overlap_tokens must be at least 0 and less than half of chunk_tokens "
            f"({chunk_tokens}), not {overlap_tokens}"
        )
    if max_chunks is not None and max_chunks < 1:
        raise ConfigurationError(f"max_chunks must be at least 1, not {max_chunks}")


class _Chunker(TokenBuffer):
    """The state of one :func:`chunk_text` call: a sliding buffer of token spans."""

    def __init__(
        self,
        text: str,
        tokenizer: OffsetTokenizer,
        chunk_tokens: int,
        overlap_tokens: int,
        max_chunks: int | None,
        max_chars: int,
    ) -> None:
        super().__init__(text, tokenizer, chunk_tokens, max_chars)
        self.overlap = overlap_tokens
        self.max_chunks = max_chunks

    # ----------------------------------------------------------------- boundaries

    def _kind(self, index: int) -> int:
        """The boundary between tokens ``index - 1`` and ``index`` (both exist)."""
        if index in self.forced:
            return _NO_BREAK
        text = self.text
        local = index - self.base
        left_end = self.ends[local - 1]
        right_start = self.starts[local]
        if left_end == right_start:  # no gap: only a token of its own may be cut beside
            if text[left_end - 1] in CJK_SENTENCE_ENDS:
                return _SENTENCE_BREAK
            if splits_alone(text, self.starts[local - 1], left_end) or splits_alone(
                text, right_start, self.ends[local]
            ):
                return _TOKEN_BREAK
            return _NO_BREAK
        gap = text[left_end:right_start]
        if gap != " ":  # the common case, a single space, needs none of these tests
            if not (gap.isspace() or any(c.isspace() for c in gap)):
                # Characters the tokenizer dropped, inside a word; a CJK sentence end
                # followed by them is still a sentence end.
                return _SENTENCE_BREAK if text[left_end - 1] in CJK_SENTENCE_ENDS else _NO_BREAK
            if "\n" in gap and PARAGRAPH.search(gap):
                return _PARAGRAPH_BREAK
        last = text[left_end - 1]
        if last in SENTENCE_ENDS or last in CJK_SENTENCE_ENDS:
            return _SENTENCE_BREAK
        if last in CLOSERS and left_end > 1 and text[left_end - 2] in SENTENCE_ENDS:
            return _SENTENCE_BREAK
        return _WORD_BREAK

    def _clean_cut(self, index: int) -> bool:
        """Whether a cut in front of token ``index`` keeps whole characters."""
        position = self.start_of(index)
        return position == 0 or not glued(self.text, position)

    def _fit(self, first: int, top: int) -> int:
        """The largest window end in ``(first, top]`` whose chunk holds at most
        ``max_chars`` characters (``first + 1`` at least; the tails up to ``top - 1``
        must be final).  A chunk ends at or after its last token's end, and token ends
        never decrease: a binary search over them, then the few tails past the bound."""
        start = self.lead if first == 0 else self.start_of(first)
        bound = start + self.max_chars
        fit = self.base + bisect.bisect_right(self.ends, bound, first - self.base, top - self.base)
        fit = max(first + 1, fit)
        while fit > first + 1 and self._tail(fit - 1) > bound:
            fit -= 1
        return fit

    def _window_end(self, first: int) -> tuple[int, bool]:
        """Global index one past the last token of the window starting at ``first``, and
        whether ``max_chars`` (rather than ``chunk_tokens``) cut it."""
        limit = first + self.size
        more = self._ensure(limit)
        top = limit if more else self.count
        fit = self._fit(first, top)
        if fit < top:  # the characters end the window first
            limit = fit
            floor = first + max(1, (fit - first + 1) // 2)
        elif not more:  # the rest of the text fits
            return self.count, False
        else:
            floor = first + max(1, (self.size + 1) // 2)
        best = _NO_BREAK
        chosen = limit
        for index in range(limit, floor - 1, -1):
            kind = self._kind(index)
            if kind > best:
                best, chosen = kind, index
                if kind == _PARAGRAPH_BREAK:
                    break
        if best == _NO_BREAK:
            chosen = next((i for i in range(limit, floor - 1, -1) if self._clean_cut(i)), limit)
        return chosen, fit < top

    def _next_start(self, first: int, end: int, by_chars: bool) -> int:
        """Where the window after ``[first, end)`` starts."""
        overlap = self.overlap
        if by_chars:  # the same share of a window cut short by max_chars
            overlap = overlap * (end - first) // self.size
        if overlap == 0:
            return end
        target = max(end - overlap, first + 1)  # a window shortened to fit may be short
        lowest = max(first + 1, target - MAX_WORD_TOKENS)
        if by_chars:  # moving on by at least half of it
            lowest = min(target, max(lowest, first + (end - first + 1) // 2))
        candidates = range(target, lowest - 1, -1)
        for wanted in (_WORD_BREAK, _TOKEN_BREAK):
            for index in candidates:
                if self._kind(index) >= wanted:
                    return index
        return next((i for i in candidates if self._clean_cut(i)), target)

    # ---------------------------------------------------------------- the chunks

    def _span(self, first: int, end: int, *, is_first: bool) -> tuple[int, int]:
        """Character span of tokens ``[first, end)``, stretched over the characters the
        tokenizer dropped up to the next window's first token, then stripped."""
        text = self.text
        start = self.lead if is_first else self.start_of(first)
        # No token at all (then the window is the whole text): all but its whitespace.
        stop = self._tail(end - 1) if end > first else len(text)
        while start < stop and text[start].isspace():
            start += 1
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        return start, stop

    def _needs_check(self, first: int, end: int, *, is_last: bool) -> bool:
        order = self.forced_order
        inside = bisect.bisect_left(order, first)
        if inside < len(order) and order[inside] < end:
            return True
        if first > 0 and self._kind(first) == _NO_BREAK:
            return True
        return not is_last and self._kind(end) == _NO_BREAK

    def run(self) -> Chunking:
        text = self.text
        if not text or text.isspace():
            return Chunking((), truncated=False)
        chunks: list[Chunk] = []
        first = 0
        while True:
            end, by_chars = self._window_end(first)
            is_last = end >= self.count and not self._ensure(end)
            start, stop = self._span(first, end, is_first=first == 0)
            tokens = end - first
            if self._needs_check(first, end, is_last=is_last):
                tokens = len(self.tokenizer.token_offsets(text[start:stop]))
                while tokens > self.size and end - first > 1:
                    end -= 1
                    is_last = False
                    start, stop = self._span(first, end, is_first=first == 0)
                    tokens = len(self.tokenizer.token_offsets(text[start:stop]))
            chunks.append(Chunk(text[start:stop], start, stop, len(chunks), tokens))
            if is_last:
                return Chunking(tuple(chunks), truncated=False)
            if self.max_chunks is not None and len(chunks) >= self.max_chunks:
                more = NON_SPACE.search(text, stop) is not None
                return Chunking(tuple(chunks), truncated=more)
            first = self._next_start(first, end, by_chars)
            self._drop_before(first - 1)  # the boundary in front of `first` reads it
