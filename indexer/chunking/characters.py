"""What the chunker knows of characters: sentence ends, paragraph breaks, characters
that are words of their own to the tokenizer, and those that belong to the character
before them (never cut in front of one)."""

from __future__ import annotations

import re
import unicodedata

CJK_SENTENCE_ENDS = frozenset("\u3002\uff01\uff1f\uff61")  # full stop, !, ?, half-width full stop
SENTENCE_ENDS = frozenset(".!?")
CLOSERS = frozenset("\"')]}\u00bb\u201d\u2019")
PARAGRAPH = re.compile(r"\n[^\S\n]*\n")
# Characters that belong to the character before them: never cut in front of one.
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")
_REGIONAL = (0x1F1E6, 0x1F1FF)  # regional indicators: two make a flag
_VIRAMA = 9  # canonical combining class of a virama
NON_SPACE = re.compile(r"\S")


def splits_alone(text: str, start: int, end: int) -> bool:
    """Whether the token ``text[start:end]`` is a word of its own to the tokenizer (a
    CJK character or a punctuation mark), so cutting beside it changes no token."""
    if end - start != 1:
        return False
    return alone(text[start])


def alone(char: str) -> bool:
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


def piece_end(text: str, start: int, stop: int) -> int:
    """Where a piece from ``start`` (not whitespace) ends, at ``stop`` at most: after a
    character other than whitespace and before one that stands on its own; failing
    that, after any character other than whitespace."""
    for position in range(stop, start, -1):
        if not text[position - 1].isspace() and not glued(text, position):
            return position
    for position in range(stop, start, -1):
        if not text[position - 1].isspace():
            return position
    return start + 1  # unreachable: text[start] is not whitespace


def glued(text: str, position: int) -> bool:
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
