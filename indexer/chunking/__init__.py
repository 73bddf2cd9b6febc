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

from indexer.chunking.buffer import BLOCK_CHARS, OffsetTokenizer
from indexer.chunking.chunker import MAX_WORD_TOKENS, Chunk, Chunking, chunk_text
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
