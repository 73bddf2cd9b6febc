"""Cut a long text into token windows the model reads whole.

The model reads at most 256 tokens of a text, [CLS] and [SEP] included, so a longer
document is embedded as several **chunks**: windows of at most ``chunk_tokens`` content
tokens (``chunk_tokens + 2 <= 256``), consecutive windows sharing about
``overlap_tokens`` tokens.  :func:`chunk_text` returns them with their character spans,
so ``text[chunk.start:chunk.end] == chunk.text`` always.

Decisions, which the tests hold:

* **Whitespace**: a chunk never starts or ends with whitespace (``str.isspace``).  Every
  other character of the text belongs to at least one chunk; only whitespace between
  two chunks (with no overlap) belongs to none.
* **Empty text**: a text that is empty or only whitespace has zero chunks.  Any other
  text has at least one, even if the tokenizer gives it no token (then ``tokens == 0``).
* **Short text**: a text of at most ``chunk_tokens`` tokens is one chunk, the whole text
  stripped of leading and trailing whitespace.
* **Where a window ends**: at the last of its ``chunk_tokens`` tokens, moved back to the
  latest paragraph boundary (a blank line) if there is one in the window's second half,
  else the latest sentence end (``.``, ``!`` or ``?``, optionally followed by a closing
  quote or bracket, then whitespace; or a CJK sentence end (U+3002, U+FF01, U+FF1F), which needs no
  space after it), else the latest word boundary (whitespace, or beside a CJK character
  or punctuation mark, which the tokenizer splits on its own); a window is never cut
  shorter than half its size for that choice, and with no boundary in its second half
  it ends inside a word (between two tokens, never inside a character).
* **Overlap**: the next window starts ``overlap_tokens`` tokens before the previous
  window's end, moved back to the start of the word holding that token, so the overlap
  is ``overlap_tokens`` plus at most the rest of one word (and at most
  :data:`MAX_WORD_TOKENS` more tokens: a longer word is cut).
* **Token counts**: :attr:`Chunk.tokens` is the number of content tokens the tokenizer
  gives the chunk's own text, never more than ``chunk_tokens``, so the model reads the
  chunk whole.  A cut between two tokens of one word re-tokenizes differently (the
  second piece loses its ``##`` continuation), so such chunks are re-tokenized and, if
  needed, shortened by a token until they fit.
* **max_chunks**: at most that many chunks; :attr:`Chunking.truncated` says whether
  text (other than whitespace) was left after the last one.
* **Memory**: the text is tokenized in blocks of about :data:`BLOCK_CHARS` characters
  cut at whitespace, and tokens are dropped once no later window can use them, so a
  huge text never has more than a few blocks of tokens in memory, and tokenizing
  stops once ``max_chunks`` chunks are made.

Pure and deterministic: the same text and settings always give the same chunks.  Speed,
measured on this project's 2-core AMD EPYC: 0.7 to 1.1 MB/s of man pages (1,200 to 3,900
chunks/s, depending on the window) and 0.93 MB/s of English prose (10 MB in 10.7 s, with a
working set of 2.7 MB beyond the chunks returned), nearly all of it the Rust tokenizer's
time; ``benchmarks/chunking_quality.md`` has the figures.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from indexer.exceptions import ConfigurationError

__all__ = [
    "BLOCK_CHARS",
    "MAX_WORD_TOKENS",
    "Chunk",
    "Chunking",
    "OffsetTokenizer",
    "chunk_text",
]

#: Characters tokenized at a time (cut at the last whitespace before it).
BLOCK_CHARS = 16_384
#: How far (in tokens) the start of a window may move back to reach a word's start.
MAX_WORD_TOKENS = 16

_CJK_SENTENCE_ENDS = frozenset("\u3002\uff01\uff1f\uff61")  # full stop, !, ?, half-width full stop
_SENTENCE_ENDS = frozenset(".!?")
_CLOSERS = frozenset("\"')]}\u00bb\u201d\u2019")
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")
# Characters that belong to the character before them: never cut in front of one.
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")
_REGIONAL = (0x1F1E6, 0x1F1FF)  # regional indicators: two make a flag
_VIRAMA = 9  # canonical combining class of a virama

# Boundary kinds, best first.  A token break (beside a CJK character or a punctuation
# mark, no whitespace) is as safe for the tokenizer as a word break but reads worse.
_PARAGRAPH_BREAK = 4
_SENTENCE_BREAK = 3
_WORD_BREAK = 2
_TOKEN_BREAK = 1
_NO_BREAK = 0
_DROP_TOKENS = 4096  # forget consumed tokens in steps of this many (list deletion is O(n))
_NON_SPACE = re.compile(r"\S")


class OffsetTokenizer(Protocol):
    """What the chunker needs of a tokenizer (:class:`indexer.embedding.Embedder` is one)."""

    def token_offsets(self, text: str) -> Sequence[tuple[int, int]]:
        """Character spans ``(start, end)`` of every content token of ``text`` (no
        special tokens, no truncation), in order."""
        ...


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
) -> Chunking:
    """Cut ``text`` into windows of at most ``chunk_tokens`` tokens (see the module doc).

    ``overlap_tokens`` must be smaller than half of ``chunk_tokens`` (so every window
    moves the text forward); ``max_chunks``, if given, at least 1.  Raises
    :class:`~indexer.exceptions.ConfigurationError` for other values.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    _check(chunk_tokens, overlap_tokens, max_chunks)
    return _Chunker(text, tokenizer, chunk_tokens, overlap_tokens, max_chunks).run()


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


class _Chunker:
    """The state of one :func:`chunk_text` call: a sliding buffer of token spans."""

    def __init__(
        self,
        text: str,
        tokenizer: OffsetTokenizer,
        chunk_tokens: int,
        overlap_tokens: int,
        max_chunks: int | None,
    ) -> None:
        self.text = text
        self.tokenizer = tokenizer
        self.size = chunk_tokens
        self.overlap = overlap_tokens
        self.max_chunks = max_chunks
        # Token spans tokenized so far, from global token index `base` on.
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.base = 0
        # Global indices of tokens that begin a block cut inside a word (rare).
        self.forced: set[int] = set()
        self.read_to = 0  # characters tokenized so far

    # ----------------------------------------------------------- the token buffer

    @property
    def count(self) -> int:
        """Tokens known so far (global index of the next one)."""
        return self.base + len(self.starts)

    def _read_block(self) -> bool:
        """Tokenize the next block; False at the end of the text."""
        text = self.text
        if self.read_to >= len(text):
            return False
        begin = self.read_to
        stop, clean = _block_end(text, begin)
        offsets = self.tokenizer.token_offsets(text[begin:stop])
        if offsets and not clean:
            self.forced.add(self.count)
        self.starts.extend(begin + s for s, _ in offsets)
        self.ends.extend(begin + e for _, e in offsets)
        self.read_to = stop
        return True

    def _ensure(self, index: int) -> bool:
        """Tokenize until global token ``index`` exists; False if the text ends first."""
        while self.count <= index:
            if not self._read_block():
                return False
        return True

    def _drop_before(self, index: int) -> None:
        """Forget tokens before global index ``index`` (no window will use them)."""
        drop = index - self.base
        if drop > _DROP_TOKENS:
            del self.starts[:drop]
            del self.ends[:drop]
            self.base = index
            self.forced = {f for f in self.forced if f >= index}

    def start_of(self, index: int) -> int:
        return self.starts[index - self.base]

    def end_of(self, index: int) -> int:
        return self.ends[index - self.base]

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
            if text[left_end - 1] in _CJK_SENTENCE_ENDS:
                return _SENTENCE_BREAK
            if _splits_alone(text, self.starts[local - 1], left_end) or _splits_alone(
                text, right_start, self.ends[local]
            ):
                return _TOKEN_BREAK
            return _NO_BREAK
        gap = text[left_end:right_start]
        if gap != " ":  # the common case, a single space, needs none of these tests
            if not (gap.isspace() or any(c.isspace() for c in gap)):
                # Characters the tokenizer dropped, inside a word; a CJK sentence end
                # followed by them is still a sentence end.
                return _SENTENCE_BREAK if text[left_end - 1] in _CJK_SENTENCE_ENDS else _NO_BREAK
            if "\n" in gap and _PARAGRAPH.search(gap):
                return _PARAGRAPH_BREAK
        last = text[left_end - 1]
        if last in _SENTENCE_ENDS or last in _CJK_SENTENCE_ENDS:
            return _SENTENCE_BREAK
        if last in _CLOSERS and left_end > 1 and text[left_end - 2] in _SENTENCE_ENDS:
            return _SENTENCE_BREAK
        return _WORD_BREAK

    def _clean_cut(self, index: int) -> bool:
        """Whether a cut in front of token ``index`` keeps whole characters."""
        position = self.start_of(index)
        return position == 0 or not _glued(self.text, position)

    def _window_end(self, first: int) -> int:
        """Global index one past the last token of the window starting at ``first``."""
        limit = first + self.size
        if not self._ensure(limit):  # the rest of the text fits
            return self.count
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
        return chosen

    def _next_start(self, first: int, end: int) -> int:
        """Where the window after ``[first, end)`` starts."""
        if self.overlap == 0:
            return end
        target = max(end - self.overlap, first + 1)  # a window shortened to fit may be short
        lowest = max(first + 1, target - MAX_WORD_TOKENS)
        candidates = range(target, lowest - 1, -1)
        for wanted in (_WORD_BREAK, _TOKEN_BREAK):
            for index in candidates:
                if self._kind(index) >= wanted:
                    return index
        return next((i for i in candidates if self._clean_cut(i)), target)

    # ---------------------------------------------------------------- the chunks

    def _span(self, first: int, end: int, *, is_first: bool, is_last: bool) -> tuple[int, int]:
        """Character span of tokens ``[first, end)``, stretched over the characters the
        tokenizer dropped up to the next window's first token, then stripped."""
        text = self.text
        start = 0 if is_first else self.start_of(first)
        stop = len(text) if is_last else self.start_of(end)
        while start < stop and text[start].isspace():
            start += 1
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        return start, stop

    def _needs_check(self, first: int, end: int, *, is_last: bool) -> bool:
        if any(first < f < end for f in self.forced):
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
            end = self._window_end(first)
            is_last = end >= self.count and not self._ensure(end)
            start, stop = self._span(first, end, is_first=first == 0, is_last=is_last)
            tokens = end - first
            if self._needs_check(first, end, is_last=is_last):
                tokens = len(self.tokenizer.token_offsets(text[start:stop]))
                while tokens > self.size and end - first > 1:
                    end -= 1
                    is_last = False
                    start, stop = self._span(first, end, is_first=first == 0, is_last=False)
                    tokens = len(self.tokenizer.token_offsets(text[start:stop]))
            chunks.append(Chunk(text[start:stop], start, stop, len(chunks), tokens))
            if is_last:
                return Chunking(tuple(chunks), truncated=False)
            if self.max_chunks is not None and len(chunks) >= self.max_chunks:
                more = _NON_SPACE.search(text, stop) is not None
                return Chunking(tuple(chunks), truncated=more)
            first = self._next_start(first, end)
            self._drop_before(first - 1)  # the boundary in front of `first` reads it


def _splits_alone(text: str, start: int, end: int) -> bool:
    """Whether the token ``text[start:end]`` is a word of its own to the tokenizer (a
    CJK character or a punctuation mark), so cutting beside it changes no token."""
    if end - start != 1:
        return False
    return _alone(text[start])


def _alone(char: str) -> bool:
    code = ord(char)
    if code < 0x80:
        return 0x20 < code < 0x7F and not char.isalnum()
    if unicodedata.category(char).startswith("P"):
        return True
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


def _block_end(text: str, begin: int) -> tuple[int, bool]:
    """End of the block starting at ``begin``, and whether tokenizing the blocks apart
    gives the tokens the whole text would: about BLOCK_CHARS characters, cut just after
    whitespace; failing that, after a CJK character or punctuation mark (both words of
    their own to the tokenizer); failing that, between two whole characters."""
    stop = begin + BLOCK_CHARS
    if stop >= len(text):
        return len(text), True
    low = begin + BLOCK_CHARS // 2
    for position in range(stop, low, -1):
        if text[position - 1].isspace():
            return position, True
    for position in range(stop, low, -1):
        if _alone(text[position - 1]) and not _glued(text, position):
            return position, True
    for position in range(stop, low, -1):
        if not _glued(text, position):
            return position, False
    return stop, False


def _glued(text: str, position: int) -> bool:
    """Whether ``text[position]`` belongs to the character before it (a combining mark,
    a joiner or variation selector, an emoji modifier or tag, the second half of a flag,
    a consonant after a virama)."""
    char = text[position]
    before = text[position - 1]
    code = ord(char)
    if char in _JOINERS or before in _JOINERS or unicodedata.combining(char):
        return True
    if 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:
        return True
    if _REGIONAL[0] <= code <= _REGIONAL[1] and _REGIONAL[0] <= ord(before) <= _REGIONAL[1]:
        return True
    return unicodedata.combining(before) == _VIRAMA and char.isalpha()
