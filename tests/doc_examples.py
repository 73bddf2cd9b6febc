"""The examples of README.md and of the docs site's pages (docs/**/*.md), as the tests
run them: which blocks, in which order, with which sample outputs.

A page's examples are its fenced code blocks that carry a language tag, in the order they
appear. ``sh``, ``sql``, ``postgresql`` and ``python`` blocks are run (sh in bash, SQL in
psql, Python in one namespace per page); a ``text`` or ``json`` block right after a run
block is the output that block prints, and is compared with what it prints now. A block
without a tag is an illustration (a log line, an error message, a recorded benchmark
run) and is not picked. Any other tag is a mistake.

HTML comments steer it, invisible on the rendered page:

- ``<!-- examples: daemon, tour-rows -->`` anywhere in a page: run an ``indexer run
  --http`` beside the page's blocks (each block waits until it has drained the queue,
  as a reader reads on), and/or insert the five-minute tour's three rows, embedded,
  before the first block (ids 1, 2, 3).
- ``<!-- not run: REASON -->`` on the line before a block: it is not run (nor its output
  compared). Rare, and always with the reason.
- ``<!-- output varies: numbers -->`` before an output block: its numbers are not
  compared; ``<!-- output varies: rows per second, eta -->``: only those of the lines
  that contain one of these words.

Outputs are compared token by token: text exactly (trailing spaces aside), ``...`` matches
anything, integers exactly, decimals to within :data:`TOLERANCE` (the last digits of a
float32 model may differ between CPUs). A ``json`` output is compared with the answer
re-written as one line in Python's ``json.dumps`` style, the sample's line breaks made
single spaces.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ("sh", "sql", "postgresql", "python")
OUTPUT = ("text", "json")
PAGE_OPTIONS = ("daemon", "tour-rows")
TOLERANCE = 5e-4
#: Pages whose examples a test of their own runs (with checks of its own), not
#: tests/acceptance/test_doc_examples.py.
OWN_TESTS = {
    "README.md": "tests/acceptance/test_readme_tour.py",
    "docs/_notes/http.md": "tests/acceptance/test_readme_samples.py",
    "docs/how-to/sqlalchemy.md": "tests/integration/test_orm_readme.py",
}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_COMMENT = re.compile(r"<!--\s*(not run|output varies|examples)\s*:\s*(.*?)\s*-->", re.DOTALL)
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_TOKEN = re.compile(rf"(\.\.\.)|({_NUMBER})")


class ExampleError(Exception):
    """A page whose examples cannot be read as this module reads them."""


@dataclass
class Block:
    path: Path
    line: int
    tag: str
    text: str
    not_run: str | None = None
    varies: tuple[str, ...] = ()
    output: Block | None = None

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


@dataclass
class Page:
    path: Path
    options: tuple[str, ...] = ()
    blocks: list[Block] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path)


def pages() -> list[Path]:
    """README.md and every Markdown file under docs/ (notes of generated pages included)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _directive(before: str) -> tuple[str, str] | None:
    """The steering comment that ends ``before`` (the text above a fence), if any."""
    tail = before.rstrip()
    if not tail.endswith("-->"):
        return None
    start = tail.rfind("<!--")
    found = _COMMENT.fullmatch(tail[start:]) if start >= 0 else None
    return (found.group(1), found.group(2)) if found else None


def read_page(path: Path) -> Page:
    """``path``'s examples: run blocks, each with the output block that follows it."""
    text = path.read_text(encoding="utf-8")
    options: tuple[str, ...] = ()
    for kind, value in _COMMENT.findall(text):
        if kind == "examples":
            options += tuple(v.strip() for v in value.split(","))
    unknown = set(options) - set(PAGE_OPTIONS)
    if unknown:
        raise ExampleError(f"{path}: unknown examples option(s) {sorted(unknown)}")
    page = Page(path, options)
    previous: Block | None = None
    previous_end = 0
    for match in _FENCE.finditer(text):
        tag = match.group(1).strip().split(" ")[0]
        line = text.count("\n", 0, match.start()) + 1
        directive = _directive(text[previous_end : match.start()])
        between = _COMMENT.sub("", text[previous_end : match.start()]).strip()
        block = Block(path, line, tag, match.group(2))
        if directive is not None and directive[0] == "not run":
            if not directive[1]:
                raise ExampleError(f"{block.where}: say why a block is not run")
            block.not_run = directive[1]
        if directive is not None and directive[0] == "output varies":
            block.varies = tuple(v.strip() for v in directive[1].split(",") if v.strip())
        previous_end = match.end()
        if not tag:
            previous = None
            continue
        if tag in OUTPUT:
            if previous is None or between:
                raise ExampleError(
                    f"{block.where}: a {tag} block is the output of the run block right "
                    "above it (only a comment between), and there is none"
                )
            previous.output = block
            previous = None
            continue
        if tag not in RUN:
            raise ExampleError(
                f"{block.where}: unknown tag {tag!r} (run: {', '.join(RUN)}; output: "
                f"{', '.join(OUTPUT)}; no tag: not picked)"
            )
        if block.varies:
            raise ExampleError(f"{block.where}: 'output varies' belongs before an output block")
        page.blocks.append(block)
        previous = block
    return page


def all_pages() -> list[Page]:
    return [read_page(path) for path in pages()]


# -- comparing outputs ------------------------------------------------------------------


def _one_line_json(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines())


def normalize(sample: Block, actual: str) -> tuple[str, str]:
    """The sample and the actual output as they are compared."""
    if sample.tag == "json":
        try:
            answer = json.dumps(json.loads(actual), ensure_ascii=False)
        except json.JSONDecodeError:
            answer = actual.strip()
        return _one_line_json(sample.text), answer
    strip = "\n".join(line.rstrip() for line in actual.strip("\n").splitlines())
    return "\n".join(line.rstrip() for line in sample.text.strip("\n").splitlines()), strip


def mismatch(sample: Block, actual: str) -> str | None:
    """Why ``actual`` is not what ``sample`` shows; None when it is."""
    expected, got = normalize(sample, actual)
    pattern: list[str] = []
    #: for each number of the sample, in order: its text, or None when it may vary
    numbers: list[str | None] = []
    for number, line in enumerate(expected.split("\n")):
        if number:
            pattern.append("\n")
        free = "numbers" in sample.varies or any(v in line for v in sample.varies)
        position = 0
        for token in _TOKEN.finditer(line):
            pattern.append(re.escape(line[position : token.start()]))
            if token.group(1):
                pattern.append(".*?")
            else:
                pattern.append(f"({_NUMBER})")
                numbers.append(None if free else token.group(2))
            position = token.end()
        pattern.append(re.escape(line[position:]))
    found = re.fullmatch("".join(pattern), got, re.DOTALL)
    if found is None:
        return f"the output is not what {sample.where} shows:\n{got}"
    for shown, value in zip(numbers, found.groups(), strict=True):
        if shown is None:
            continue
        if "." in shown or "e" in shown.lower():
            if abs(float(shown) - float(value)) > TOLERANCE:
                return f"{sample.where} shows {shown}, the run printed {value}:\n{got}"
        elif shown != value:
            return f"{sample.where} shows {shown}, the run printed {value}:\n{got}"
    return None
