"""How the examples of README and the docs are read and compared (tests/doc_examples.py),
without a database; and README's links, which the docs site's strict build does not see."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify

from ..doc_examples import (
    OWN_TESTS,
    ROOT,
    Block,
    ExampleError,
    all_pages,
    mismatch,
    read_page,
)


def page(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return read_page(path).blocks


def output(text: str, tag: str = "text", varies: tuple[str, ...] = ()) -> Block:
    return Block(ROOT / "README.md", 1, tag, text, varies=varies)


def test_blocks_outputs_and_directives_are_read(tmp_path: Path) -> None:
    blocks = page(
        tmp_path,
        "<!-- examples: daemon -->\n"
        "```sh\necho 1\n```\n"
        "<!-- output varies: numbers -->\n"
        "```text\n1\n```\n\nprose\n\n"
        "```\nan illustration: not picked\n```\n"
        "<!-- not run: needs Docker -->\n"
        "```sh\ndocker build .\n```\n"
        "```python\nprint(2)\n```\n",
    )
    assert [(b.tag, b.not_run) for b in blocks] == [
        ("sh", None),
        ("sh", "needs Docker"),
        ("python", None),
    ]
    assert blocks[0].output is not None and blocks[0].output.varies == ("numbers",)
    assert blocks[1].output is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("```console\n$ ls\n```\n", "unknown tag"),
        ("prose\n\n```text\norphan\n```\n", "output of the run block"),
        ("```sh\necho\n```\nwords\n```text\n1\n```\n", "output of the run block"),
        ("<!-- not run: -->\n```sh\necho\n```\n", "say why"),
        ("<!-- examples: deamon -->\n", "unknown examples option"),
    ],
)
def test_mistakes_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ExampleError, match=message):
        page(tmp_path, text)


def test_text_outputs_compare_text_exactly_and_numbers_within_tolerance() -> None:
    shown = output("embedded            3\nscore  0.5261  PostgreSQL\n")
    assert mismatch(shown, "embedded            3\nscore  0.52612  PostgreSQL  \n") is None
    assert mismatch(shown, "embedded            4\nscore  0.5261  PostgreSQL\n") is not None
    assert mismatch(shown, "embedded            3\nscore  0.5271  PostgreSQL\n") is not None
    assert mismatch(shown, "embedded            3\nscore  0.5261  SQLite\n") is not None
    assert mismatch(shown, "embedded            3\n") is not None


def test_outputs_that_vary() -> None:
    rate = output("embedded 3\nrows per second 0.54\n", varies=("rows per second",))
    assert mismatch(rate, "embedded 3\nrows per second 12.5\n") is None
    assert mismatch(rate, "embedded 2\nrows per second 0.54\n") is not None
    every = output("revision 0007\n", varies=("numbers",))
    assert mismatch(every, "revision 0008\n") is None


def test_json_outputs_are_compared_as_one_line_with_elisions() -> None:
    shown = output('{"embeddings": [[0.0397689, -0.010241, ...], ...],\n "dim": 384}', "json")
    answer = '{"embeddings":[[0.03977,-0.01024,0.5,0.1],[0.2]],"dim":384}'
    assert mismatch(shown, answer) is None
    assert mismatch(shown, answer.replace("384", "768")) is not None
    assert mismatch(shown, answer.replace("0.03977", "0.1")) is not None


def test_every_page_reads_and_few_blocks_are_not_run() -> None:
    pages = all_pages()
    blocks = [b for p in pages for b in p.blocks]
    skipped = [b for b in blocks if b.not_run is not None]
    assert len(blocks) >= 50
    # Rare, and each with its reason (read_page refuses one without).
    assert len(skipped) <= 14, [b.where for b in skipped]
    for name in OWN_TESTS:
        assert (ROOT / name).exists(), name
    for test in OWN_TESTS.values():
        assert (ROOT / test).exists(), test


def _site_pages() -> set[str]:
    def walk(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in walk(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in walk(value)]
        return []

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    return {"docs/" + p for p in walk(config["nav"])}


def test_readme_links_lead_to_pages_of_the_site_and_their_headings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    site = _site_pages()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        assert target in site or (ROOT / target).exists(), link
        if anchor and target.startswith("docs/") and (ROOT / target).exists():
            headings = re.findall(r"^#+ (.+)$", (ROOT / target).read_text(), re.MULTILINE)
            assert anchor in {slugify(h, "-") for h in headings}, link
