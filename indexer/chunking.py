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
* **Characters**: a chunk never holds more than ``max_chars`` characters, however few
  tokens they are (a word the tokenizer cannot split, such as 1,000,000 letters without
  a space, is one ``[UNK]`` token).  A window whose ``chunk_tokens`` tokens would pass it
  ends earlier, at the best boundary in the second half of what fits (as above), and the
  overlap after it is the same share of its tokens as ``overlap_tokens`` is of
  ``chunk_tokens`` (rounded down), so windows keep moving forward by at least half of
  themselves.  To make that possible, a token longer than a quarter of ``max_chars`` is
  read as pieces of at most that many characters (and of at most ``chunk_tokens`` tokens
  each once re-tokenized alone), and so is a long run of characters the tokenizer drops
  (control and format characters: no token at all); windows that hold such pieces are
  re-tokenized for their counts.  Pieces are cut between whole characters, unless a
  character is followed by more combining marks or joiners than a piece holds.  The
  default, :data:`~indexer.limits.CHUNK_MAX_CHARS`, cuts no window of ordinary text (the
  figures are there).
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

import bisect
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from indexer.exceptions import ConfigurationError
from indexer.limits import CHUNK_MAX_CHARS, MIN_CHUNK_CHARS

__all__ = [
    "BLOCK_CHARS",
    "CHUNK_MAX_CHARS",
    "MAX_WORD_TOKENS",
    "MIN_CHUNK_CHARS",
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


class _Chunker:
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
        self.text = text
        self.tokenizer = tokenizer
        self.size = chunk_tokens
        self.overlap = overlap_tokens
        self.max_chunks = max_chunks
        self.max_chars = max_chars
        # Longest token (or run of dropped characters) read as one; longer ones are cut
        # into pieces this long, so that a window always holds at least one (a piece, the
        # characters dropped after it and, for the first window, those before it: at most
        # three pieces' worth).
        self.piece = max_chars // 4
        # Token spans tokenized so far, from global token index `base` on.
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.base = 0
        # Global indices of tokens that begin a block cut inside a word (rare), of the
        # pieces of a long token but its first, and of runs of dropped characters read as
        # tokens: a window over any of them is re-tokenized for its count.  Also kept in
        # order (they only grow), to find one inside a window.
        self.forced: set[int] = set()
        self.forced_order: list[int] = []
        self.read_to = 0  # characters tokenized so far
        found = _NON_SPACE.search(text)
        self.lead = found.start() if found else len(text)  # the first chunk's start

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
        piece = self.piece
        starts, ends = self.starts, self.ends
        previous = ends[-1] if ends else -1 - piece  # no token yet: look at the gap
        forced = not clean
        for s, e in offsets:
            start = begin + s
            end = begin + e
            if start - previous > piece:  # rare: a long gap, or the first token
                self._gap(start)
            if forced or end - start > piece:  # rare: a cut block, or a long token
                self._add_pieces(start, end, forced=forced, counted=True)
                forced = False
            else:
                starts.append(start)
                ends.append(end)
            previous = ends[-1]
        self.read_to = stop
        if stop >= len(text):
            self._gap(len(text))
        return True

    def _add(self, start: int, end: int, *, forced: bool) -> None:
        """Append a token (or piece) spanning ``[start, end)``."""
        if forced:
            index = self.count
            self.forced.add(index)
            self.forced_order.append(index)
        self.starts.append(start)
        self.ends.append(end)

    def _tail(self, index: int) -> int:
        """Where a chunk whose last token is ``index`` ends: after the characters the
        tokenizer dropped up to the next token (or the text's end), whitespace left out.
        Needs the next token read, or the whole text."""
        text = self.text
        local = index - self.base
        begin = self.starts[local]
        tail = self.ends[local]
        following = self.starts[local + 1] if local + 1 < len(self.starts) else len(text)
        tail += len(text[tail:following].rstrip())
        while tail > begin and text[tail - 1].isspace():
            tail -= 1
        return tail

    def _add_pieces(self, start: int, end: int, *, forced: bool, counted: bool) -> None:
        """Append ``[start, end)`` as pieces of at most ``piece`` characters, each
        starting and ending with a character other than whitespace, cut between whole
        characters where possible; all but the first forced (so counted again).

        ``counted``: the span is a token (not characters the tokenizer drops), so a piece
        may be more than ``chunk_tokens`` tokens on its own (a piece of a word of up to
        100 characters once the dropped ones are gone, or the rest of a long word): such
        a piece is cut again, after its ``chunk_tokens``-th token, so that every piece
        fits a window alone."""
        text = self.text
        if end - start <= self.piece:  # a short token that begins a cut block
            self._add(start, end, forced=forced)
            return
        found = _NON_SPACE.search(text, start, end)
        while found is not None:
            position = found.start()
            stop = position + self.piece
            if stop >= end:
                stop = end
                while text[stop - 1].isspace():
                    stop -= 1
            else:
                stop = _piece_end(text, position, stop)
            if counted and stop - position > self.size:
                stop = self._fitting(position, stop)
            self._add(position, stop, forced=forced)
            forced = True
            found = _NON_SPACE.search(text, stop, end)

    def _fitting(self, start: int, stop: int) -> int:
        """``stop``, or an earlier end that leaves ``text[start:stop]`` (part of one word)
        ``chunk_tokens`` tokens at most: the start of its next token, which a prefix of
        a word keeps (WordPiece matches greedily from the left)."""
        offsets = self.tokenizer.token_offsets(self.text[start:stop])
        if len(offsets) <= self.size:
            return stop
        for index in range(self.size, 0, -1):
            cut = start + offsets[index][0]
            if cut > start and not _glued(self.text, cut):
                return cut
        return start + offsets[self.size][0]

    def _gap(self, following: int) -> None:
        """Characters the tokenizer dropped before ``following`` (the next token's start,
        or the text's end), after the last token: read as forced pieces if what a chunk
        would stretch over is longer than a piece (else the last token's tail covers
        them, or the first chunk starts with them)."""
        text = self.text
        if self.starts:
            begin = self.ends[-1]
            stretch = len(text[begin:following].rstrip())
            if stretch <= self.piece:
                return
            # Marks that belong to the last token's last character stay with it.
            limit = min(following, begin + self.piece)
            while begin < limit and _glued(text, begin):
                begin += 1
        else:
            begin = self.lead
            if following - begin <= self.piece:
                return
        self._add_pieces(begin, following, forced=True, counted=False)

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
            del self.forced_order[: bisect.bisect_left(self.forced_order, index)]

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
                more = _NON_SPACE.search(text, stop) is not None
                return Chunking(tuple(chunks), truncated=more)
            first = self._next_start(first, end, by_chars)
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


def _piece_end(text: str, start: int, stop: int) -> int:
    """Where a piece from ``start`` (not whitespace) ends, at ``stop`` at most: after a
    character other than whitespace and before one that stands on its own; failing
    that, after any character other than whitespace."""
    for position in range(stop, start, -1):
        if not text[position - 1].isspace() and not _glued(text, position):
            return position
    for position in range(stop, start, -1):
        if not text[position - 1].isspace():
            return position
    return start + 1  # unreachable: text[start] is not whitespace


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
