"""The chunker's token buffer: the text tokenized a block at a time, long tokens and
long runs of dropped characters read as pieces, and tokens forgotten once no window
can use them (see "Memory" and "Characters" in :mod:`indexer.chunking`)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol

from indexer.chunking.characters import NON_SPACE, alone, glued, piece_end

#: Characters tokenized at a time (cut at the last whitespace before it).
BLOCK_CHARS = 16_384
_DROP_TOKENS = 4096  # forget consumed tokens in steps of this many (list deletion is O(n))


class OffsetTokenizer(Protocol):
    """What the chunker needs of a tokenizer (:class:`indexer.embedding.Embedder` is one)."""

    def token_offsets(self, text: str) -> Sequence[tuple[int, int]]:
        """Character spans ``(start, end)`` of every content token of ``text`` (no
        special tokens, no truncation), in order."""
        ...


class TokenBuffer:
    """A sliding buffer of the token spans of ``text``, by global token index."""

    def __init__(
        self, text: str, tokenizer: OffsetTokenizer, chunk_tokens: int, max_chars: int
    ) -> None:
        self.text = text
        self.tokenizer = tokenizer
        self.size = chunk_tokens
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
        found = NON_SPACE.search(text)
        self.lead = found.start() if found else len(text)  # the first chunk's start

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
        stop, clean = block_end(text, begin)
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
        found = NON_SPACE.search(text, start, end)
        while found is not None:
            position = found.start()
            stop = position + self.piece
            if stop >= end:
                stop = end
                while text[stop - 1].isspace():
                    stop -= 1
            else:
                stop = piece_end(text, position, stop)
            if counted and stop - position > self.size:
                stop = self._fitting(position, stop)
            self._add(position, stop, forced=forced)
            forced = True
            found = NON_SPACE.search(text, stop, end)

    def _fitting(self, start: int, stop: int) -> int:
        """``stop``, or an earlier end that leaves ``text[start:stop]`` (part of one word)
        ``chunk_tokens`` tokens at most: the start of its next token, which a prefix of
        a word keeps (WordPiece matches greedily from the left)."""
        offsets = self.tokenizer.token_offsets(self.text[start:stop])
        if len(offsets) <= self.size:
            return stop
        for index in range(self.size, 0, -1):
            cut = start + offsets[index][0]
            if cut > start and not glued(self.text, cut):
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
            while begin < limit and glued(text, begin):
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


def block_end(text: str, begin: int) -> tuple[int, bool]:
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
        if alone(text[position - 1]) and not glued(text, position):
            return position, True
    for position in range(stop, low, -1):
        if not glued(text, position):
            return position, False
    return stop, False
