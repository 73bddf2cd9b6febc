"""mkdocs hooks (``hooks:`` in mkdocs.yml): the generated reference pages, and a check
that the built site fetches nothing from elsewhere.

The reference pages are made by :mod:`generate` once per process (``mkdocs serve``
rebuilds reuse them) and added as files that exist only in the build: nothing
generated is committed, so nothing generated can be stale.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from generate import generate
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

_PAGES: dict[str, str] = {}

#: An attribute that makes a browser fetch something (a script, a style sheet, a
#: font, an image) from another host.  Links the reader follows (``<a href>``) are
#: not fetches.
_FETCH = re.compile(
    r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//",
    re.IGNORECASE,
)
_CSS_URL = re.compile(r"@import\s+url\(\s*[\"']?(?:https?:)?//|url\(\s*[\"']?https?://")


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    if not _PAGES:
        _PAGES.update(generate())
    for path, text in _PAGES.items():
        if files.get_file_from_path(path) is not None:
            raise PluginError(f"docs/{path} is generated at build time: delete the file")
        files.append(File.generated(config, path, content=text))
    return files


def on_post_build(config: MkDocsConfig, **kwargs: Any) -> None:
    site = Path(config.site_dir)
    offenders = []
    for path in sorted(site.rglob("*")):
        if path.suffix not in (".html", ".css"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        pattern = _FETCH if path.suffix == ".html" else _CSS_URL
        match = pattern.search(text)
        if match is not None:
            offenders.append(f"{path.relative_to(site)}: {match.group(0)[:80]}")
    if offenders:
        raise PluginError(
            "the site would fetch from other hosts when viewed: " + "; ".join(offenders)
        )
