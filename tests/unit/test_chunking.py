"""The token-window chunker, with the real tokenizer; and the pure parts of
benchmarks/chunking_quality.py (query sets, document scores) on a tiny corpus."""

from __future__ import annotations

import importlib.util
import itertools
import random
import sys
import time
import tracemalloc
import unicodedata
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from indexer.chunking import (
    BLOCK_CHARS,
    CHUNK_MAX_CHARS,
    MAX_WORD_TOKENS,
    Chunk,
    Chunking,
    chunk_text,
)
from indexer.embedding import Embedder
from indexer.exceptions import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent.parent

VOCABULARY = (
    "the database keeps every row of text beside its vector and the daemon embeds "
    "new rows as they arrive while search reads the index unbelievably quickly"
)
WORDS = VOCABULARY.split()


def _prose(rng: random.Random, paragraphs: int) -> str:
    """Paragraphs of sentences of words, with some long words and punctuation."""
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 25))]
            if rng.random() < 0.2:
                words.insert(rng.randrange(len(words)), "(see below),")
            sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
        out.append(" ".join(sentences))
    return "\n\n".join(out)


class Counting:
    """The real tokenizer, counting the characters it is given."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.chars = 0

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        self.chars += len(text)
        return self.embedder.token_offsets(text)


def _check(
    text: str,
    chunking: Chunking,
    embedder: Embedder,
    chunk_tokens: int,
) -> None:
    """What every chunking must hold."""
    chunks = chunking.chunks
    assert [c.position for c in chunks] == list(range(len(chunks)))
    covered = bytearray(len(text))
    previous = -1
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip()
        assert chunk.text
        assert chunk.start > previous  # windows move forward
        previous = chunk.start
        tokens = len(embedder.token_offsets(chunk.text))
        assert tokens == chunk.tokens <= chunk_tokens
        for position in (chunk.start, chunk.end):
            if 0 < position < len(text):
                assert not unicodedata.combining(text[position]), (chunk, position)
                assert text[position] not in "\u200d\ufe0f"
                assert text[position - 1] != "\u200d"
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    lost = [c for c, seen in zip(text, covered, strict=True) if not seen and not c.isspace()]
    if not chunking.truncated:
        assert lost == []


# ------------------------------------------------------------------ basics


def test_empty_and_whitespace_text_have_no_chunks(embedder: Embedder) -> None:
    for text in ("", " ", "\n\n\t \u3000"):
        result = chunk_text(text, embedder, chunk_tokens=100, overlap_tokens=10)
        assert result == Chunking((), truncated=False)
        assert len(result) == 0


def test_a_short_text_is_one_chunk_without_its_outer_whitespace(embedder: Embedder) -> None:
    text = "  \n Cats sleep up to sixteen hours a day.\n\n  "
    result = chunk_text(text, embedder, chunk_tokens=100, overlap_tokens=10)
    stripped = text.strip()
    assert result.chunks == (Chunk(stripped, text.index("C"), text.index(".") + 1, 0, 9),)
    assert not result.truncated
    exact = "word " * 99 + "word"  # exactly chunk_tokens tokens
    assert [
        c.text for c in chunk_text(exact, embedder, chunk_tokens=100, overlap_tokens=10).chunks
    ] == [exact]


def test_text_the_tokenizer_drops_entirely_is_one_chunk_of_no_tokens(embedder: Embedder) -> None:
    text = "\x00\x01\u200b"
    result = chunk_text(text, embedder, chunk_tokens=10, overlap_tokens=2)
    assert [(c.text, c.tokens) for c in result.chunks] == [(text, 0)]


def test_bad_settings_are_one_line_configuration_errors(embedder: Embedder) -> None:
    for settings in (
        {"chunk_tokens": 0, "overlap_tokens": 0},
        {"chunk_tokens": 100, "overlap_tokens": -1},
        {"chunk_tokens": 100, "overlap_tokens": 50},
        {"chunk_tokens": 100, "overlap_tokens": 10, "max_chunks": 0},
        {"chunk_tokens": 100, "overlap_tokens": 10, "max_chars": 15},
        {"chunk_tokens": 100, "overlap_tokens": 10, "max_chars": 100.0},
    ):
        with pytest.raises(ConfigurationError) as caught:
            chunk_text("some text", embedder, **settings)
        assert "\n" not in str(caught.value)
    with pytest.raises(TypeError):
        chunk_text(b"bytes", embedder, chunk_tokens=10, overlap_tokens=0)  # type: ignore[arg-type]


def test_token_offsets_cover_every_token_without_truncation(embedder: Embedder) -> None:
    text = _prose(random.Random(1), 40)
    offsets = embedder.token_offsets(text)
    assert len(offsets) > 3 * embedder.max_tokens
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(offsets))
    short = "Cats sleep up to sixteen hours a day."
    assert len(embedder.token_offsets(short)) + 2 == embedder.count_tokens([short])[0]
    assert embedder.token_offsets("") == []
    # A lone surrogate is replaced in place, as embed() does: offsets still fit the text.
    assert embedder.token_offsets("a\ud800b c") == [(0, 3), (4, 5)]


# ------------------------------------------------------------ the windows


@pytest.mark.parametrize(("size", "overlap"), [(128, 16), (200, 40), (254, 32), (40, 0), (9, 4)])
def test_windows_cover_the_text_fit_the_model_and_overlap_as_asked(
    embedder: Embedder, size: int, overlap: int
) -> None:
    rng = random.Random(size * 1000 + overlap)
    for _ in range(4):
        text = "\n  " + _prose(rng, rng.randint(5, 30)) + "  \n"
        result = chunk_text(text, embedder, chunk_tokens=size, overlap_tokens=overlap)
        assert not result.truncated
        assert len(result) > 1
        _check(text, result, embedder, size)
        offsets = embedder.token_offsets(text)
        for current, following in zip(result.chunks, result.chunks[1:], strict=False):
            shared = sum(1 for s, e in offsets if s >= following.start and e <= current.end)
            assert overlap <= shared <= overlap + min(MAX_WORD_TOKENS, 4), (current, following)
            # Half a window at least, whatever boundary was chosen.
            assert current.tokens >= (size + 1) // 2
        assert result.chunks[0].start == text.index(text.strip()[0])
        assert result.chunks[-1].end == len(text.rstrip())


def test_chunking_is_deterministic(embedder: Embedder) -> None:
    text = _prose(random.Random(5), 30)
    first = chunk_text(text, embedder, chunk_tokens=100, overlap_tokens=20)
    assert first == chunk_text(text, embedder, chunk_tokens=100, overlap_tokens=20)


def _paragraph(words: int, sentence_words: int = 10**6) -> str:
    """``words`` words of one token each, a sentence end every ``sentence_words``."""
    out = []
    for i in range(1, words + 1):
        out.append("word." if i % sentence_words == 0 else "word")
    return " ".join(out)


def test_a_window_ends_at_a_paragraph_then_a_sentence_then_a_word(embedder: Embedder) -> None:
    size = 100
    # A paragraph break at 70 tokens wins over sentence ends later in the window.
    text = _paragraph(69) + ".\n\n" + _paragraph(200, 7)
    first = chunk_text(text, embedder, chunk_tokens=size, overlap_tokens=0).chunks[0]
    assert first.text == _paragraph(69) + "."
    # One too early (before half the window) loses to the latest sentence end: the
    # second paragraph's sentences are 12 tokens (11 words and a full stop).
    text = _paragraph(20) + "\n\n" + _paragraph(200, 11)
    first = chunk_text(text, embedder, chunk_tokens=size, overlap_tokens=0).chunks[0]
    assert first.text.endswith("word.")
    assert first.tokens == 20 + 6 * 12
    # No sentence end: the last word boundary, at the window's full size.
    text = _paragraph(300)
    first = chunk_text(text, embedder, chunk_tokens=size, overlap_tokens=0).chunks[0]
    assert first.tokens == size
    assert first.text == _paragraph(size)
    # A sentence end followed by a closing quote or bracket counts; one inside a
    # number does not.
    text = _paragraph(60) + ' "quoted." ' + "3.14 " * 40 + _paragraph(100)
    first = chunk_text(text, embedder, chunk_tokens=size, overlap_tokens=0).chunks[0]
    assert first.text.endswith('"quoted."')


def test_sentence_boundary_exact_position(embedder: Embedder) -> None:
    size = 100
    text = _paragraph(80) + ". " + _paragraph(200)
    first = chunk_text(text, embedder, chunk_tokens=size, overlap_tokens=0).chunks[0]
    assert first.text == _paragraph(80) + "."
    assert first.tokens == 81


def test_a_word_longer_than_a_window_is_cut_between_tokens(embedder: Embedder) -> None:
    # Words of many word pieces (under the tokenizer's 100 characters, beyond which a
    # word is one [UNK]): no boundary in a window, so windows end inside a word, and a
    # re-tokenized piece must still fit.
    rng = random.Random(8)
    words = ["".join(rng.choice("qxzjvkwpfhg") for _ in range(99)) for _ in range(5)]
    text = "pre " + " ".join(words) + " post"
    assert len(embedder.token_offsets(words[0])) > 40
    result = chunk_text(text, embedder, chunk_tokens=20, overlap_tokens=4)
    assert len(result) > 2
    _check(text, result, embedder, 20)


def test_tiny_windows_over_random_letters_always_move_forward_and_fit(
    embedder: Embedder,
) -> None:
    # Cuts inside words everywhere: a window re-tokenized and shortened to fit must
    # still leave the next one starting after it.
    rng = random.Random(9)
    letters = "abcdefghijklmnopqrstuvwxyz" * 3
    for trial in range(300):
        alphabet = letters if trial % 2 else letters + " .\u00e9\u4e2d"
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))
        size = rng.randint(3, 12)
        overlap = rng.randint(0, (size + 1) // 2 - 1)
        result = chunk_text(text, embedder, chunk_tokens=size, overlap_tokens=overlap)
        _check(text, result, embedder, size)


# ---------------------------------------------------------------- max_chunks


def test_max_chunks_is_respected_and_reported(embedder: Embedder) -> None:
    text = _prose(random.Random(2), 40)
    every = chunk_text(text, embedder, chunk_tokens=64, overlap_tokens=8)
    assert len(every) > 5
    cut = chunk_text(text, embedder, chunk_tokens=64, overlap_tokens=8, max_chunks=3)
    assert cut.truncated
    assert cut.chunks == every.chunks[:3]
    exact = chunk_text(text, embedder, chunk_tokens=64, overlap_tokens=8, max_chunks=len(every))
    assert not exact.truncated
    assert exact.chunks == every.chunks
    trailing = chunk_text(text + "\n\n   ", embedder, chunk_tokens=64, overlap_tokens=8)
    assert not chunk_text(
        text + "\n\n   ", embedder, chunk_tokens=64, overlap_tokens=8, max_chunks=len(trailing)
    ).truncated


# ------------------------------------------------------------------- unicode


UNICODE_PIECES = (
    "👋🏽",  # emoji with a skin-tone modifier
    "👨\u200d👩\u200d👧",  # a ZWJ family
    "❤\ufe0f",  # a variation selector
    "e\u0301",  # a combining acute accent
    "\u0915\u094d\u0937",  # Devanagari conjunct (virama)
    "\U0001f1eb\U0001f1f7",  # a flag (two regional indicators)
    "مرحبا",  # Arabic (RTL)
    "\u05e9\u05b8\u05dc\u05d5\u05b9\u05dd",  # Hebrew with vowel points
    "中文没有空格这是句子",  # CJK, no spaces
    "\u3002",  # ideographic full stop
    "\uff01",  # fullwidth exclamation mark
    "naïve",
    " ",
    "\n\n",
)


def test_unicode_is_never_split_inside_a_character_nor_lost(embedder: Embedder) -> None:
    rng = random.Random(3)
    for size, overlap, max_chars in ((8, 3, None), (16, 0, None), (50, 10, None), (16, 3, 64)):
        for _ in range(10):
            pieces = [rng.choice(UNICODE_PIECES) for _ in range(rng.randint(20, 400))]
            text = "".join(pieces)
            result = chunk_text(
                text,
                embedder,
                chunk_tokens=size,
                overlap_tokens=overlap,
                max_chars=max_chars or CHUNK_MAX_CHARS,
            )
            _check(text, result, embedder, size)
            assert all(len(c.text) <= (max_chars or CHUNK_MAX_CHARS) for c in result.chunks)


@pytest.mark.parametrize(
    "piece",
    [
        "\u4e2d\u6587",  # CJK: every character a token, blocks cut between them
        "-",  # punctuation: every mark a token
        "abcdefghij",  # one endless word: the tokenizer makes it one [UNK]
        "\U0001f44b\U0001f3fd",  # emoji with a modifier, no spaces
        "\u0645\u0631\u062d\u0628\u0627",  # Arabic, no spaces
    ],
)
def test_text_without_whitespace_across_tokenizer_blocks(embedder: Embedder, piece: str) -> None:
    # Longer than several tokenizer blocks and without a space, so blocks are cut
    # between characters; windows over such a cut are re-tokenized whole.
    text = piece * (3 * BLOCK_CHARS // len(piece) + 7)
    result = chunk_text(text, embedder, chunk_tokens=128, overlap_tokens=16)
    _check(text, result, embedder, 128)


def test_cjk_without_spaces_ends_windows_at_sentence_ends(embedder: Embedder) -> None:
    sentence = "中文没有空格这是句子。"  # 11 tokens, one per character
    text = sentence * 30
    result = chunk_text(text, embedder, chunk_tokens=50, overlap_tokens=0)
    _check(text, result, embedder, 50)
    assert all(c.text.endswith("。") for c in result.chunks)
    assert result.chunks[0].tokens == 44


# --------------------------------------------------------------- characters


def test_a_text_without_a_space_becomes_many_bounded_chunks(embedder: Embedder) -> None:
    # 1,000,000 letters without a space are one [UNK] token to the tokenizer: they used
    # to make one chunk of 1,000,000 characters.
    rng = random.Random(10)
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1_000_000))
    result = chunk_text(text, embedder, chunk_tokens=128, overlap_tokens=16)
    assert not result.truncated
    assert max(len(c.text) for c in result.chunks) == CHUNK_MAX_CHARS
    assert len(result) == -(-len(text) // CHUNK_MAX_CHARS)  # pieces of one word: no overlap
    _check(text, result, embedder, 128)
    cut = chunk_text(text, embedder, chunk_tokens=128, overlap_tokens=16, max_chunks=10)
    assert cut.truncated
    assert cut.chunks == result.chunks[:10]


def test_ordinary_text_is_never_cut_by_the_default_bound(embedder: Embedder) -> None:
    # README and the docs (prose, tables, shell and SQL, URLs) and Python's documentation
    # topics, in the largest windows the model reads: the bound changes no chunk.
    from pydoc_data.topics import topics

    ours = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    texts = [*(path.read_text(encoding="utf-8") for path in ours), *topics.values()]
    for text in texts:
        bounded = chunk_text(text, embedder, chunk_tokens=254, overlap_tokens=32)
        free = chunk_text(text, embedder, chunk_tokens=254, overlap_tokens=32, max_chars=10**9)
        assert bounded == free
        assert max(len(c.text) for c in bounded.chunks) < CHUNK_MAX_CHARS // 2


_PATHOLOGICAL = (
    "word",
    " ",
    "\n\n",
    ". ",
    "x" * 40,
    "y" * 130,  # one [UNK]
    "\u200b" * 30,  # a format character: dropped by the tokenizer, inside a word or not
    "\u00ad",
    " \u00ad\u00ad ",
    "\x00",
    "\x1c",  # whitespace to Python, a control character the tokenizer drops
    "\u4e2d\u6587",
    "e\u0301",
    "-",
    "\u3000",
)


@pytest.mark.parametrize("max_chars", [16, 17, 64, 300])
def test_windows_cut_by_characters_cover_the_text_and_fit(
    embedder: Embedder, max_chars: int
) -> None:
    rng = random.Random(max_chars)
    for _ in range(80):
        text = "".join(rng.choice(_PATHOLOGICAL) for _ in range(rng.randint(1, 120)))
        size = rng.randint(3, 40)
        overlap = rng.randint(0, (size + 1) // 2 - 1)
        result = chunk_text(
            text, embedder, chunk_tokens=size, overlap_tokens=overlap, max_chars=max_chars
        )
        _check(text, result, embedder, size)
        assert all(len(c.text) <= max_chars for c in result.chunks), (text, size, overlap)


@pytest.mark.parametrize(
    "text",
    [
        "a" + "\u200b" * 100_000 + "b",  # one token of 100,002 characters
        " \u00ad" * 50_000,  # no token at all, spaces between
        "\u00ad" * 100_000,  # no token at all
        "word " + "\x00" * 50_000 + " word",  # a run the tokenizer drops, between tokens
        "a" + " " * 100_000 + "b",  # whitespace belongs to no chunk
    ],
    ids=["in-a-token", "spaced", "alone", "between-tokens", "whitespace"],
)
def test_runs_of_characters_the_tokenizer_drops_are_bounded_too(
    embedder: Embedder, text: str
) -> None:
    result = chunk_text(text, embedder, chunk_tokens=128, overlap_tokens=16, max_chars=1000)
    _check(text, result, embedder, 128)
    assert all(len(c.text) <= 1000 for c in result.chunks)
    if text.startswith("a "):
        assert [c.text for c in result.chunks] == ["a", "b"]
    else:
        assert len(result) >= -(-len(text.strip()) // 1000)


def test_a_window_cut_by_characters_overlaps_by_the_same_share(embedder: Embedder) -> None:
    # Words of 150 letters (each one [UNK]) fill 8,192 characters with 54 tokens: a
    # window ends at a word, shares 16/128 of its 54 tokens (6 words) with the next.
    rng = random.Random(11)
    text = " ".join("".join(rng.choice("abcdefghij") for _ in range(150)) for _ in range(1000))
    result = chunk_text(text, embedder, chunk_tokens=128, overlap_tokens=16)
    _check(text, result, embedder, 128)
    assert not result.truncated
    for current, following in itertools.pairwise(result.chunks[:-1]):
        assert current.tokens == 54
        assert len(current.text) == 54 * 151 - 1 <= CHUNK_MAX_CHARS
        assert current.end - following.start == 6 * 151 - 1


# -------------------------------------------------------------------- scale


def test_a_huge_text_stops_tokenizing_at_max_chunks(embedder: Embedder) -> None:
    unit = _prose(random.Random(4), 50) + "\n\n"
    text = unit * (10_000_000 // len(unit) + 1)
    assert len(text) > 10_000_000
    counting = Counting(embedder)
    tracemalloc.start()
    try:
        result = chunk_text(text, counting, chunk_tokens=200, overlap_tokens=40, max_chunks=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result) == 20
    assert result.truncated
    assert counting.chars < 200_000  # a few blocks, not the text
    assert peak < 5_000_000


def _peak_memory(text: str, embedder: Embedder) -> tuple[int, int, Chunking]:
    """Peak traced memory of chunking ``text``, and the size of the result."""
    tracemalloc.start()
    try:
        result = chunk_text(text, embedder, chunk_tokens=200, overlap_tokens=40)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = sum(sys.getsizeof(c.text) + sys.getsizeof(c) for c in result.chunks)
    return peak, held, result


def test_memory_beyond_the_result_does_not_grow_with_the_text(embedder: Embedder) -> None:
    unit = _prose(random.Random(6), 60) + "\n\n"
    small = (unit * (100_000 // len(unit) + 1))[:100_000]
    large = (unit * (500_000 // len(unit) + 1))[:500_000]
    small_peak, small_held, _ = _peak_memory(small, embedder)
    large_peak, large_held, result = _peak_memory(large, embedder)
    assert len(result) > 250
    # The working set (peak minus what is returned) is the same for 5x the text.
    assert large_peak - large_held < max(2 * (small_peak - small_held), 4_000_000)


@pytest.mark.slow
def test_ten_megabytes_are_chunked_whole_in_bounded_memory_and_time(embedder: Embedder) -> None:
    unit = _prose(random.Random(7), 60) + "\n\n"
    text = (unit * (10_000_000 // len(unit) + 1))[:10_000_000]
    began = time.monotonic()
    peak, held, result = _peak_memory(text, embedder)
    seconds = time.monotonic() - began
    assert seconds < 1200  # a hang, not a speed test
    assert not result.truncated
    assert result.chunks[-1].end == len(text.rstrip())
    assert peak - held < 8_000_000


# ------------------------------------------------- the benchmark's pure parts


def _benchmark() -> ModuleType:
    path = ROOT / "benchmarks" / "chunking_quality.py"
    spec = importlib.util.spec_from_file_location("chunking_quality", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("chunking_quality", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _benchmark()


def _doc(bench: ModuleType, name: str, title: str, text: str) -> object:
    return bench.Document(name, "man", title, text)


def test_man_title_is_the_name_line(bench: ModuleType) -> None:
    page = "NAME\nls - list directory\ncontents\n\nSYNOPSIS\nls [OPTION]..."
    assert bench.man_title(page) == "ls - list directory contents"
    assert bench.man_title("SYNOPSIS\nnothing") is None


def test_deep_query_is_a_whole_sentence_after_what_a_row_reads(bench: ModuleType) -> None:
    head = "Intro words here. " * 30
    tail = "Short one. This sentence has exactly nine words in it, see. Last words."
    text = head + tail
    sentence = bench.deep_query(text, len(head) - 5)
    assert sentence == "This sentence has exactly nine words in it, see."
    assert bench.deep_query(text, len(text)) is None


def test_queries_from_a_tiny_corpus(bench: ModuleType, embedder: Embedder) -> None:
    boiler = "This page is free software and comes with no warranty at all."
    long_a = " ".join(f"alpha{i} topic words." for i in range(200))
    docs = [
        _doc(
            bench,
            "a",
            "a - the first tool",
            long_a + " The first tool reads files quickly and "
            "writes them to standard output. " + boiler,
        ),
        _doc(bench, "b", "b - the second tool", "Short page about the second tool."),
        _doc(bench, "c", "c - the third tool", long_a + " " + boiler),
    ]
    summary = bench.summary_queries(docs)
    assert [(q.text, q.document) for q in summary] == [
        ("a - the first tool", 0),
        ("b - the second tool", 1),
        ("c - the third tool", 2),
    ]
    purpose = bench.purpose_queries([*docs, _doc(bench, "d", "d - two words", "x")])
    assert [(q.text, q.document) for q in purpose] == [
        ("the first tool", 0),
        ("the second tool", 1),
        ("the third tool", 2),
    ]
    deep = bench.deep_queries(docs, embedder)
    # b is short; the boilerplate sentence is in a and c, so c has no query.
    assert [(q.text, q.document) for q in deep] == [
        ("The first tool reads files quickly and writes them to standard output.", 0)
    ]


def test_scores_and_recall_on_hand_made_vectors(bench: ModuleType) -> None:
    def unit(*values: float) -> list[float]:
        v = np.array(values, dtype=np.float64)
        return list(v / np.linalg.norm(v))

    # Three documents: 0 has 3 chunks, 1 has 1, 2 has 2.
    chunks = np.array(
        [unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1), unit(1, 1, 0), unit(0, 1, 1), unit(1, 0, 1)],
        dtype=np.float32,
    )
    chunked = bench.Chunked(
        ["x"] * 6,
        np.array([0, 0, 0, 1, 2, 2]),
        np.array([0, 3, 4]),
        np.array([3, 1, 2]),
    )
    single = chunks[[0, 3, 4]]
    queries = np.array([unit(0, 0, 1), unit(1, 1, 0)], dtype=np.float32)
    sims = bench.similarities(queries, chunks, chunked, single)
    np.testing.assert_allclose(sims.best[0], [1.0, 0.0, np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(sims.first[0], [0.0, 0.0, np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(sims.single, sims.first, atol=1e-6)
    scorers = bench.scorers()
    np.testing.assert_allclose(scorers["max"](sims), sims.best)
    penalised = scorers["max-log a=0.04"](sims)
    np.testing.assert_allclose(penalised[0], sims.best[0] - 0.04 * np.log([3, 1, 2]))
    np.testing.assert_allclose(scorers["mean-first"](sims)[0], [0.5, 0.0, np.sqrt(0.5)])
    margin = scorers["max-single m=0.1"](sims)
    np.testing.assert_allclose(margin[0], [1.0, 0.1, np.sqrt(0.5) + 0.1], atol=1e-6)
    # Query 0: document 0 first (1.0); query 1: document 1 (1.0), then 0 (0.71), then 2.
    scores = sims.best
    assert bench.recall(scores, [0, 1], 1) == 1.0
    assert bench.recall(scores, [0, 0], 1) == 0.5
    assert bench.recall(scores, [0, 0], 2) == 1.0
    assert bench.recall(scores, [0, 2], 2) == 0.5
    # A tie counts against the relevant document.
    assert bench.recall(np.array([[0.5, 0.5]]), [0], 1) == 0.0
    assert np.isnan(bench.recall(scores, [], 1))
