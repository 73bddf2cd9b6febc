"""The texts every section embeds, built deterministically from the standard library.

The Python standard library's own source is on every machine that runs the bench, so
the corpus needs no download and is the same wherever the same Python is installed.
"""

from __future__ import annotations

import os
import random
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.bench.common import ONE_MB, SEED
from indexer.exceptions import IndexerError


@dataclass
class Corpus:
    short: list[str]
    mixed: list[str]
    queries: list[str]
    #: Chunks for the backfill, ``mixed`` first (the model section's corpus).
    backfill: list[str]


def stdlib_files() -> list[Path]:
    """The standard library's .py files, sorted; installed packages left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        found.extend(Path(folder) / f for f in sorted(files) if f.endswith(".py"))
    return sorted(found)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").replace("\x00", "")
    except OSError:
        return ""


def _pick_lines(
    text: str,
    seen: set[str],
    count_tokens: Callable[[Sequence[str]], list[int]],
    rng: random.Random,
) -> list[str]:
    """Up to four distinct lines of ``text`` of 12-22 tokens ([CLS] and [SEP] included)."""
    candidates = sorted({ln.strip() for ln in text.splitlines()} - seen)
    candidates = [c for c in candidates if 30 <= len(c) <= 100]
    picks = rng.sample(candidates, min(4, len(candidates)))
    return [p for p, n in zip(picks, count_tokens(picks), strict=True) if 12 <= n <= 22]


def _pick_chunk(text: str, rng: random.Random) -> str:
    """200-1800 characters of ``text``, starting at a line."""
    size = rng.randint(200, 1800)
    start = rng.randrange(0, len(text) - size)
    start = text.rfind("\n", 0, start) + 1
    return text[start : start + size]


def build_corpus(
    count_tokens: Callable[[Sequence[str]], list[int]],
    short: int,
    mixed: int,
    queries: int,
    backfill: int = 0,
) -> Corpus:
    """Short lines (10-20 tokens) and chunks of 200-1800 characters (about 1 KB).

    Files are visited in a shuffled (fixed-seed) order and give a few lines and at
    most one chunk each, so the corpus spans the whole library.  Queries are further
    short lines, disjoint from the corpus.
    """
    rng = random.Random(SEED)
    files = stdlib_files()
    rng.shuffle(files)
    lines: list[str] = []
    seen: set[str] = set()
    chunks: list[str] = []
    want_lines = short + queries
    want_chunks = max(mixed, backfill)
    for path in files:
        if len(lines) >= want_lines and len(chunks) >= want_chunks:
            break
        text = _read(path)
        if len(text) < 2000:
            continue
        if len(lines) < want_lines:
            for pick in _pick_lines(text, seen, count_tokens, rng)[: want_lines - len(lines)]:
                lines.append(pick)
                seen.add(pick)
        if len(chunks) < want_chunks:
            chunk = _pick_chunk(text, rng)
            if chunk.strip():
                chunks.append(chunk)
    if len(lines) < want_lines or len(chunks) < want_chunks:
        raise IndexerError(
            f"the standard library gave only {len(lines)} short lines and {len(chunks)} "
            f"chunks (wanted {want_lines} and {want_chunks})"
        )
    return Corpus(
        short=lines[:short],
        mixed=chunks[:mixed],
        queries=lines[short:],
        backfill=chunks[:backfill],
    )


def big_texts(count: int, size: int = ONE_MB) -> list[str]:
    """``count`` distinct texts of ``size`` characters, cut from the library's source."""
    step = 50_000
    parts: list[str] = []
    total = 0
    for path in stdlib_files():
        text = _read(path)
        parts.append(text)
        total += len(text)
        if total >= size + step * count:
            break
    blob = "".join(parts)
    if len(blob) < size + step * count:
        blob = blob * (1 + (size + step * count) // max(len(blob), 1))
    return [blob[i * step : i * step + size] for i in range(count)]


def search_lines(count: int, exclude: set[str], *, per_file: int = 16) -> list[str]:
    """``count`` more distinct source lines (20-200 characters) for the search table.

    Up to ``per_file`` per file (16 give about 25,000 lines; a larger table needs
    more), files in a fixed-seed order of their own; ``exclude`` (the corpus and the
    queries) keeps the queries out of the table.
    """
    rng = random.Random(SEED + 1)
    files = stdlib_files()
    rng.shuffle(files)
    found: list[str] = []
    seen = set(exclude)
    for path in files:
        if len(found) >= count:
            break
        candidates = sorted({ln.strip() for ln in _read(path).splitlines()} - seen)
        candidates = [c for c in candidates if 20 <= len(c) <= 200]
        for pick in rng.sample(candidates, min(per_file, len(candidates))):
            found.append(pick)
            seen.add(pick)
    if len(found) < count:
        raise IndexerError(f"the standard library gave only {len(found)} distinct lines")
    return found[:count]


def many_chunks(count: int, *, rounds: int = 4) -> list[str]:
    """``count`` distinct chunks of 200-1800 characters, as the mixed corpus's, for a
    drain larger than :func:`build_corpus` can give (one chunk a file: about 1,300).

    Files are visited in a fixed-seed order of their own, in up to ``rounds`` passes,
    each pass cutting one more chunk from every long file.
    """
    rng = random.Random(SEED + 2)
    files = stdlib_files()
    rng.shuffle(files)
    texts = [t for t in map(_read, files) if len(t) >= 2000]
    found: list[str] = []
    seen: set[str] = set()
    for _ in range(rounds):
        for text in texts:
            if len(found) >= count:
                return found
            chunk = _pick_chunk(text, rng)
            if chunk.strip() and chunk not in seen:
                found.append(chunk)
                seen.add(chunk)
    if len(found) < count:
        raise IndexerError(f"the standard library gave only {len(found)} distinct chunks")
    return found
