"""How many characters a window of tokens holds in real text: the figures behind
``INDEXER_CHUNK_MAX_CHARS``.

    python benchmarks/chunk_chars.py [--man 300] [--code 300] [--max-chars 8192]

For every text of each corpus, every window of 128, 200 and 254 consecutive tokens (the
default ``chunk_tokens``, a common larger one, the most the model reads) is measured in
characters, from its first token's start to its last token's end; the script prints, per
corpus, the characters per token overall, the median, 99.9th percentile and largest
window, how many 200-token windows are longer than ``--max-chars``, and the longest
single token.  It then chunks every text twice, at 128:16 and at 254:32, once with
``--max-chars`` as the character bound and once with no bound, and counts the chunks
that differ.

The corpora are what every Debian machine with Python has offline: English man pages
(sections 1, 5, 7, 8, in a fixed pseudo-random order) rendered as a terminal shows them
(80 columns) and as ``benchmarks/chunking_quality.py`` renders them (4,000 columns, so a
paragraph is one line, and a table as wide as its longest cell allows), the localized
man pages (CJK, Cyrillic, Latin; 80 columns), the Python documentation topics, a fixed
sample of the standard library's source (code), its test data files (numbers, e-mail
with base64, CJK encodings), and every URL found in all of these, one per line.  Needs
``man`` for the man pages (skipped without it).  A tool for people, not part of ``make
test``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.chunking import chunk_text
from indexer.embedding import Embedder
from indexer.limits import CHUNK_MAX_CHARS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chunking_quality import MAN_ROOT, MAN_SECTIONS, _clean, _is_alias

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = (128, 200, 254)
SETTINGS = ((128, 16), (254, 32))
LOCALES = ("ja", "zh_CN", "zh_TW", "ko", "ru", "uk", "de", "fr", "pl", "tr")
_URL = re.compile(r"https?://[^\s<>\"'`)\]]+")


def render(path: Path, width: int) -> str | None:
    """A man page as plain text ``width`` columns wide (header and footer dropped)."""
    env = dict(os.environ, MANWIDTH=str(width), MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    try:
        done = subprocess.run(
            ["man", "-E", "UTF-8", "-l", str(path)],
            capture_output=True,
            env=env,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    return _clean("\n".join(line.rstrip() for line in lines[1:-1]))


def _man_files(folder: Path, limit: int) -> list[Path]:
    files = sorted(
        p
        for section in MAN_SECTIONS
        if (folder / section).is_dir()
        for p in (folder / section).iterdir()
        if p.name.endswith(".gz") and not p.is_symlink() and not p.name.startswith("gcloud")
    )
    random.Random(1).shuffle(files)
    found: list[Path] = []
    for path in files:
        if len(found) >= limit:
            break
        page = None if _is_alias(path) else render(path, 80)
        if page and len(page) >= 300:
            found.append(path)
    return found


def _pages(files: list[Path], width: int) -> list[str]:
    return [page for page in (render(p, width) for p in files) if page]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def corpora(man: int, code: int) -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    random.Random(2).shuffle(sources)
    data = sorted(
        p
        for pattern in ("test/*.txt", "test/cjkencodings/*-utf8.txt", "test/test_email/data/*")
        for p in stdlib.glob(pattern)
    )
    english = _man_files(MAN_ROOT, man)
    localized = [p for locale in LOCALES for p in _man_files(MAN_ROOT / locale, man // 10)]
    found: dict[str, list[str]] = {
        "English man pages, 80 columns": _pages(english, 80),
        "the same, 4,000 columns": _pages(english, 4000),
        "localized man pages, 80 columns": _pages(localized, 80),
        "Python topics": list(topics.values()),
        "Python source": [t for t in map(_read, sources[:code]) if t.strip()],
        "Python test data": [t for t in map(_read, data) if t.strip()],
    }
    urls = sorted({u for texts in found.values() for t in texts for u in _URL.findall(t)})
    found["URLs, one per line"] = ["\n".join(urls[i : i + 200]) for i in range(0, len(urls), 200)]
    return {name: texts for name, texts in found.items() if texts}


def window_chars(offsets: Sequence[tuple[int, int]], size: int) -> np.ndarray:
    """Characters of every window of ``size`` consecutive tokens (a shorter text: all)."""
    if not offsets:
        return np.zeros(0, dtype=np.int64)
    starts = np.fromiter((s for s, _ in offsets), dtype=np.int64, count=len(offsets))
    ends = np.fromiter((e for _, e in offsets), dtype=np.int64, count=len(offsets))
    if len(offsets) <= size:
        return np.array([ends[-1] - starts[0]])
    return ends[size - 1 :] - starts[: len(offsets) - size + 1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--man", type=int, default=300, help="English man pages (300)")
    parser.add_argument("--code", type=int, default=300, help="standard library files (300)")
    parser.add_argument(
        "--max-chars",
        type=int,
        default=CHUNK_MAX_CHARS,
        help=f"the bound checked ({CHUNK_MAX_CHARS}, the default of INDEXER_CHUNK_MAX_CHARS)",
    )
    args = parser.parse_args(argv)
    embedder = Embedder(cache_dir=ROOT / ".tmp" / "models")
    bound = args.max_chars
    settings = " | ".join(f"{size}:{overlap} chunks cut" for size, overlap in SETTINGS)
    print(
        "| corpus | texts | characters | chars/token | "
        + " | ".join(f"{w} tokens: median / 99.9% / max" for w in WINDOWS)
        + f" | 200-token windows over {bound} | longest token | {settings} |"
    )
    print("|---" * (7 + len(WINDOWS) + len(SETTINGS)) + "|")
    for name, texts in corpora(args.man, args.code).items():
        offsets = [embedder.token_offsets(t) for t in texts]
        tokens = sum(len(o) for o in offsets)
        chars = sum(len(t) for t in texts)
        cells = []
        for size in WINDOWS:
            spans = np.concatenate([window_chars(o, size) for o in offsets])
            cells.append(
                f"{int(np.median(spans)):,} / {int(np.percentile(spans, 99.9)):,} / "
                f"{int(spans.max()):,}"
            )
            if size == 200:
                over = f"{int((spans > bound).sum()):,} of {len(spans):,}"
        cells.append(over)
        cells.append(f"{max((e - s for o in offsets for s, e in o), default=0):,}")
        for size, overlap in SETTINGS:
            total = cut = 0
            for text in texts:
                given = {"chunk_tokens": size, "overlap_tokens": overlap}
                bounded = chunk_text(text, embedder, **given, max_chars=bound).chunks
                free = chunk_text(text, embedder, **given, max_chars=10**9).chunks
                total += len(free)
                cut += sum(a != b for a, b in zip(bounded, free, strict=False))
                cut += abs(len(bounded) - len(free))
            cells.append(f"{cut:,} of {total:,}")
        print(
            f"| {name} | {len(texts)} | {chars:,} | {chars / max(tokens, 1):.2f} | "
            + " | ".join(cells)
            + " |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
