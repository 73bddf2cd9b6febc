"""Which chunk size, overlap and document score to use for documents longer than the model reads.

    python benchmarks/chunking_quality.py [--documents 500] [--max-chars 6000]
        [--settings 96:12,128:16,200:40,254:32] [--cache-dir .tmp/chunking_quality] [--threads 1]

The corpus is real long text that every Debian machine has offline: man pages (sections 1,
5, 7 and 8, rendered with ``man -l`` on one very long line width, so a paragraph is one
line, indentation dropped; the thousands of generated ``gcloud`` pages skipped) and the
Python documentation topics that ship with the interpreter (``pydoc_data.topics``).
``--documents`` man pages are taken in a fixed pseudo-random order (by a hash of the file
name), aliases and duplicate NAME lines skipped, and every document is cut to its first
``--max-chars`` characters (at a line end) so the embedding runs fit in minutes on one core.

Three query sets, each query's relevant document being the one it came from:

* **summary**: a man page's NAME line (``ls - list directory contents``), a topic's title;
* **purpose**: a harder summary set, a man page's NAME line without the names before its
  dash (``list directory contents``), as a user who does not know the command would ask;
* **deep**: one sentence (8 to 40 words) from the last quarter of a document longer than
  256 tokens, starting after everything the model reads of the document as a single row.

A deep query whose text appears in more than one document is dropped (man pages share
boilerplate).  For each method the script prints recall@1 and recall@10 of the relevant
document, for every set:

* ``single row``: the document as one row (the model reads its first 256 tokens);
* ``max``: the document's chunks (:func:`indexer.chunking.chunk_text`, each setting), the
  score of its best chunk;
* ``max-log``: best chunk minus ``alpha * ln(chunks)``, a penalty for having many chances;
* ``mean-first``: the mean of the best chunk and the document's first chunk;
* ``max-single``: ``max(best chunk, single row + margin)``: the single-row vector is kept
  beside the chunk vectors, and a margin favours it.

Every vector is computed once and cached under ``--cache-dir`` (named by a hash of the
model and the texts), so a second run takes seconds; the scores are numpy on those vectors.
``--dry-run`` describes the corpus and the chunks and embeds nothing.  Needs ``man`` (the
man pages are skipped without it).
A tool for people, not part of ``make test``; its pure parts (the query sets, the scores)
are unit-tested in ``tests/unit/test_chunking.py``.  ``benchmarks/chunking_quality.md``
holds the measured results.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.chunking import OffsetTokenizer, chunk_text
from indexer.embedding import Embedder

Floats = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
ROOT = Path(__file__).resolve().parent.parent
MAN_ROOT = Path("/usr/share/man")
MAN_SECTIONS = ("man1", "man5", "man7", "man8")
MODEL_TOKENS = 256  # what the model reads of a row, [CLS]/[SEP] included
DEEP_WORDS = (8, 40)
KS = (1, 10)
#: Thousands of near-identical generated pages (Google Cloud SDK): they would be most of
#: the sample and mostly duplicates of each other.
SKIPPED_FAMILIES = ("gcloud",)

_NAME = re.compile(r"^NAME[ \t]*\n(.+?)(?:\n[ \t]*\n|\Z)", re.MULTILINE | re.DOTALL)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?](?=\s|$)")


def _say(message: str) -> None:
    print(f"chunking: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Document:
    """One document of the corpus; ``title`` is what its summary query is made of."""

    name: str
    source: str  # "man" or "pydoc"
    title: str
    text: str


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars].rstrip()


def render_man(path: Path) -> str | None:
    """A man page as plain text (header and footer lines dropped), or None."""
    env = dict(os.environ, MANWIDTH="4000", MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    try:
        done = subprocess.run(
            ["man", "-E", "UTF-8", "-l", str(path)],
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    # Drop the header and footer lines; indentation carries nothing for the model.
    return _clean("\n".join(line.strip() for line in lines[1:-1]))


def man_title(text: str) -> str | None:
    """The NAME line of a rendered man page, on one line."""
    match = _NAME.search(text)
    if match is None:
        return None
    title = " ".join(match.group(1).split())
    return title if len(title.split()) >= 3 else None


def _man_files() -> list[Path]:
    files = []
    for section in MAN_SECTIONS:
        folder = MAN_ROOT / section
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_symlink() or not path.name.endswith(".gz"):
                continue
            if path.name.startswith(SKIPPED_FAMILIES):
                continue
            files.append(path)
    return sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())


def _is_alias(path: Path) -> bool:
    try:
        with gzip.open(path, "rt", errors="replace") as stream:
            head = stream.read(400)
    except OSError:
        return True
    return any(line.startswith(".so ") for line in head.splitlines()[:3])


def build_corpus(documents: int, max_chars: int) -> list[Document]:
    """``documents`` man pages and every Python documentation topic (see the module doc)."""
    from pydoc_data.topics import topics

    corpus: list[Document] = []
    titles: set[str] = set()
    for name, body in sorted(topics.items()):
        text = _clean(body)
        title = text.splitlines()[0].strip()
        if title in titles:
            continue
        titles.add(title)
        corpus.append(Document(f"pydoc:{name}", "pydoc", title, _cut(text, max_chars)))
    wanted = documents + len(corpus)
    for path in _man_files():
        if len(corpus) >= wanted:
            break
        if _is_alias(path):
            continue
        page = render_man(path)
        if page is None or len(page) < 300:
            continue
        name_line = man_title(page)
        if name_line is None or name_line in titles:
            continue
        titles.add(name_line)
        corpus.append(Document(f"man:{path.name}", "man", name_line, _cut(page, max_chars)))
    return corpus


def load_corpus(cache: Path, documents: int, max_chars: int) -> list[Document]:
    path = cache / f"corpus-{documents}-{max_chars}.json"
    if path.exists():
        return [Document(**d) for d in json.loads(path.read_text())]
    _say(f"rendering {documents} man pages (once; cached in {path})")
    corpus = build_corpus(documents, max_chars)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([d.__dict__ for d in corpus]))
    return corpus


# ------------------------------------------------------------------ queries


@dataclass(frozen=True)
class Query:
    text: str
    document: int  # index of the relevant document


def _normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def _unique(queries: Iterable[Query], documents: Sequence[Document]) -> list[Query]:
    """Queries whose text occurs in no document but their own."""
    texts = [_normalised(d.text) for d in documents]
    kept = []
    for query in queries:
        needle = _normalised(query.text)
        if sum(needle in t for t in texts) <= 1:
            kept.append(query)
    return kept


def summary_queries(documents: Sequence[Document]) -> list[Query]:
    """A query per document: its title (NAME line, topic title; titles are distinct, but
    may appear in other documents, as a reference or a "see also")."""
    return [Query(d.title, i) for i, d in enumerate(documents)]


def purpose_queries(documents: Sequence[Document]) -> list[Query]:
    """A query per man page: its NAME line's description, without the names (3 words or more)."""
    queries = []
    for index, document in enumerate(documents):
        if document.source != "man":
            continue
        _, dash, purpose = document.title.partition(" - ")
        if dash and len(purpose.split()) >= 3:
            queries.append(Query(purpose, index))
    return queries


def single_row_chars(text: str, tokenizer: OffsetTokenizer) -> tuple[int, int]:
    """Content tokens of ``text``, and how many characters of it the model reads as one row."""
    offsets = tokenizer.token_offsets(text)
    content = MODEL_TOKENS - 2
    if len(offsets) <= content:
        return len(offsets), len(text)
    return len(offsets), offsets[content - 1][1]


def deep_query(text: str, read_chars: int) -> str | None:
    """A sentence of 8 to 40 words from the last quarter of ``text``, starting after
    ``read_chars`` (what a single row's model reads), or None."""
    begin = max(read_chars, len(text) * 3 // 4)
    low, high = DEEP_WORDS
    for match in _SENTENCE.finditer(text, begin):
        if match.start() == begin and begin > 0 and not text[begin - 1].isspace():
            continue  # the tail of a sentence cut by `begin`
        sentence = " ".join(match.group().split())
        words = len(sentence.split())
        if low <= words <= high and sum(c.isalpha() for c in sentence) > len(sentence) // 2:
            return sentence
    return None


def deep_queries(documents: Sequence[Document], tokenizer: OffsetTokenizer) -> list[Query]:
    """A query per document longer than 256 tokens, from its last quarter."""
    queries = []
    for index, document in enumerate(documents):
        tokens, read = single_row_chars(document.text, tokenizer)
        if tokens <= MODEL_TOKENS - 2:
            continue
        sentence = deep_query(document.text, read)
        if sentence is not None:
            queries.append(Query(sentence, index))
    return _unique(queries, documents)


# ------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Chunked:
    """The chunks of every document of a corpus, in document order."""

    texts: list[str]
    document: Ints  # per chunk: its document's index
    first: Ints  # per document: index of its first chunk
    count: Ints  # per document: how many chunks


def chunk_corpus(
    documents: Sequence[Document], tokenizer: OffsetTokenizer, size: int, overlap: int
) -> Chunked:
    texts: list[str] = []
    owner: list[int] = []
    first: list[int] = []
    count: list[int] = []
    for index, document in enumerate(documents):
        chunks = chunk_text(document.text, tokenizer, chunk_tokens=size, overlap_tokens=overlap)
        first.append(len(texts))
        count.append(len(chunks))
        texts.extend(c.text for c in chunks.chunks)
        owner.extend([index] * len(chunks))
    return Chunked(
        texts, np.array(owner, np.int64), np.array(first, np.int64), np.array(count, np.int64)
    )


@dataclass(frozen=True)
class Similarities:
    """Cosines of every query with every document, the ways the scores need them."""

    best: Scores  # (queries, documents): best chunk
    first: Scores  # (queries, documents): first chunk
    single: Scores  # (queries, documents): the document as one row
    count: Ints  # (documents,): chunks per document


def similarities(queries: Floats, chunks: Floats, chunked: Chunked, single: Floats) -> Similarities:
    """Per-document best and first chunk cosines (chunks of a document are contiguous)."""
    if np.any(chunked.count < 1):
        raise ValueError("every document needs at least one chunk")
    cos = (queries @ chunks.T).astype(np.float64)
    best = np.maximum.reduceat(cos, chunked.first, axis=1)
    return Similarities(
        best=best,
        first=cos[:, chunked.first],
        single=(queries @ single.T).astype(np.float64),
        count=chunked.count,
    )


Scorer = Callable[[Similarities], Scores]


def scorers() -> dict[str, Scorer]:
    """The document scores compared, by name."""
    table: dict[str, Scorer] = {"max": lambda s: s.best}
    for alpha in (0.01, 0.02, 0.04):
        table[f"max-log a={alpha}"] = _log_penalty(alpha)
    table["mean-first"] = lambda s: (s.best + s.first) / 2
    for margin in (0.0, 0.02, 0.05, 0.1):
        table[f"max-single m={margin}"] = _single_margin(margin)
    return table


def _log_penalty(alpha: float) -> Scorer:
    return lambda s: s.best - alpha * np.log(s.count)[None, :]


def _single_margin(margin: float) -> Scorer:
    return lambda s: np.maximum(s.best, s.single + margin)


def recall(scores: Scores, relevant: Sequence[int], k: int) -> float:
    """Share of queries whose relevant document is among the ``k`` best (ties count
    against it: a document scoring the same ranks before it)."""
    if len(relevant) == 0:
        return float("nan")
    rows = np.arange(len(relevant))
    target = scores[rows, np.asarray(relevant)]
    above = (scores >= target[:, None]).sum(axis=1) - 1
    return float(np.mean(above < k))


# ------------------------------------------------------------------ vectors


def embed_cached(embedder: Embedder, texts: Sequence[str], cache: Path, label: str) -> Floats:
    """The texts' vectors, computed once and kept under ``cache``."""
    digest = hashlib.sha256(embedder.name.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    path = cache / f"vectors-{digest.hexdigest()[:24]}.npy"
    if path.exists():
        vectors: Floats = np.load(path)
        return vectors
    _say(f"embedding {len(texts)} {label} (once; cached in {path.name})")
    began = time.perf_counter()
    parts = []
    step = 256
    for offset in range(0, len(texts), step):
        parts.append(embedder.embed(texts[offset : offset + step]))
        done = min(offset + step, len(texts))
        if done % (step * 8) == 0 or done == len(texts):
            _say(f"  {label}: {done}/{len(texts)} in {time.perf_counter() - began:.0f} s")
    vectors = np.concatenate(parts) if parts else np.empty((0, embedder.dim), np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


# ------------------------------------------------------------------ main


def _settings(value: str) -> list[tuple[int, int]]:
    pairs = []
    for item in value.split(","):
        size, _, overlap = item.partition(":")
        pairs.append((int(size), int(overlap or 0)))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--documents", type=int, default=500, help="man pages (default 500)")
    parser.add_argument(
        "--max-chars", type=int, default=6000, help="characters kept per document (6000)"
    )
    parser.add_argument(
        "--settings",
        type=_settings,
        default=_settings("96:12,128:16,200:40,254:32"),
        help="chunk_tokens:overlap pairs (default 96:12,128:16,200:40,254:32)",
    )
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".tmp" / "chunking_quality")
    parser.add_argument("--threads", type=int, default=1, help="model threads (default 1)")
    parser.add_argument(
        "--dry-run", action="store_true", help="describe the corpus and chunks, embed nothing"
    )
    args = parser.parse_args(argv)

    began = time.perf_counter()
    embedder = Embedder(cache_dir=ROOT / ".tmp" / "models", threads=args.threads)
    corpus = load_corpus(args.cache_dir, args.documents, args.max_chars)
    lengths = [len(embedder.token_offsets(d.text)) for d in corpus]
    summary = summary_queries(corpus)
    purpose = purpose_queries(corpus)
    deep = deep_queries(corpus, embedder)
    long_docs = sum(n > MODEL_TOKENS - 2 for n in lengths)
    chars = sorted(len(d.text) for d in corpus)
    print(
        f"corpus: {len(corpus)} documents ({sum(d.source == 'man' for d in corpus)} man pages, "
        f"{sum(d.source == 'pydoc' for d in corpus)} Python topics), "
        f"{sum(chars)} characters, median {chars[len(chars) // 2]}, "
        f"tokens median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}, "
        f"{long_docs} longer than {MODEL_TOKENS - 2} tokens; "
        f"queries: {len(summary)} summary, {len(purpose)} purpose, {len(deep)} deep"
    )

    if args.dry_run:
        for size, overlap in args.settings:
            chunked = chunk_corpus(corpus, embedder, size, overlap)
            tokens = sum(len(embedder.token_offsets(t)) for t in chunked.texts)
            print(f"{size}:{overlap}: {len(chunked.texts)} chunks, {tokens} tokens")
        return 0
    single = embed_cached(embedder, [d.text for d in corpus], args.cache_dir, "single rows")
    query_vectors = {
        "summary": embed_cached(embedder, [q.text for q in summary], args.cache_dir, "queries"),
        "purpose": embed_cached(embedder, [q.text for q in purpose], args.cache_dir, "queries"),
        "deep": embed_cached(embedder, [q.text for q in deep], args.cache_dir, "queries"),
    }
    relevant = {
        "summary": [q.document for q in summary],
        "purpose": [q.document for q in purpose],
        "deep": [q.document for q in deep],
    }

    columns = [f"{name} R@{k}" for name in relevant for k in KS]
    print("| setting | score | chunks | " + " | ".join(columns) + " |")
    print("|" + "---|" * (3 + len(columns)))

    def row(setting: str, score: str, chunks: str, table: dict[str, Scores]) -> None:
        cells = [f"{100 * recall(table[s], relevant[s], k):.1f}" for s in relevant for k in KS]
        print(f"| {setting} | {score} | {chunks} | " + " | ".join(cells) + " |", flush=True)

    row(
        "single row",
        "-",
        str(len(corpus)),
        {s: (query_vectors[s] @ single.T).astype(np.float64) for s in relevant},
    )
    for size, overlap in args.settings:
        chunk_began = time.perf_counter()
        chunked = chunk_corpus(corpus, embedder, size, overlap)
        chunk_seconds = time.perf_counter() - chunk_began
        _say(
            f"chunked {size}:{overlap}: {len(chunked.texts)} chunks in {chunk_seconds:.1f} s "
            f"({sum(chars) / chunk_seconds / 1e6:.2f} MB/s, "
            f"{len(chunked.texts) / chunk_seconds:.0f} chunks/s)"
        )
        vectors = embed_cached(embedder, chunked.texts, args.cache_dir, f"chunks {size}:{overlap}")
        sims = {s: similarities(query_vectors[s], vectors, chunked, single) for s in relevant}
        for name, scorer in scorers().items():
            row(
                f"{size}:{overlap}",
                name,
                str(len(chunked.texts)),
                {s: scorer(sims[s]) for s in relevant},
            )
    _say(f"done in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
