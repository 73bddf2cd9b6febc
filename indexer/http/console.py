"""The web console at ``/``: one HTML page, one script and one style sheet shipped in
the package (``indexer/http/static/``), and the small JSON endpoints the page reads.

The page holds no data, so it loads without the token; it asks for the API's bearer
token, keeps it in the tab's sessionStorage and sends it with every request for data,
which :class:`~indexer.http.middleware.RequireToken` guards like the rest of the API.
Its numbers are those of ``indexer status --json``: the same Store calls (the
``indexer_status`` and ``indexer_source_status`` views, the failed rows and documents),
made JSON by the same rules (durations in seconds, times in ISO 8601).  Retries go
through the Store's retry paths, those of ``indexer retry``.  Searches use the API's
own ``POST /search``; ``/console/api/context`` adds the text around a passage.

For slow links: the page is revalidated on every load (ETag, 304 when unchanged) and
names its script and style sheet by a hash of their content, so that a browser keeps
those for good and fetches them again only when they change; every asset goes out
gzipped to a client that accepts it.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import gzip
import hashlib
import importlib.resources
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from indexer.exceptions import DatabaseUnavailable
from indexer.http.middleware import OPEN_PATHS
from indexer.http.parse import BodyError, parse_body
from indexer.http.resources import Resources
from indexer.store.console import Span

#: The page and its two assets: no token needed (they hold no data).
SHELL_PATHS = ("/", "/console/console.js", "/console/console.css")
#: What RequireToken lets through without a token: the API's open paths and the shell.
TOKEN_FREE_PATHS = (*OPEN_PATHS, *SHELL_PATHS)
API = "/console/api"
#: Every path of the console, for the request metrics' endpoint label.
ENDPOINTS = (
    *SHELL_PATHS,
    f"{API}/overview",
    f"{API}/failures",
    f"{API}/throughput",
    f"{API}/context",
    f"{API}/retry",
)

#: Failed rows (and failed documents) one /failures answer lists, by default and at most.
FAILED_SHOWN = 100
MAX_FAILED_SHOWN = 1000
#: Passages one /context request may ask about, and characters of text around each.
MAX_SPANS = 100
MAX_AROUND = 2000

#: The page's headers: nothing but its own files may run or load (the data it shows
#: comes from the database, so it is written into the page as text, never as HTML).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
REVALIDATE = "no-cache"
FOREVER = "public, max-age=31536000, immutable"

T = TypeVar("T")


# -- the shell --------------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    """One file as it is sent: its bytes, gzipped too, and an ETag for each form."""

    body: bytes
    gzipped: bytes
    media_type: str
    digest: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Asset:
        digest = hashlib.sha256(body).hexdigest()[:20]
        return cls(body, gzip.compress(body, 9, mtime=0), media_type, digest)

    @property
    def version(self) -> str:
        """What the page puts in the asset's URL (``?v=``)."""
        return self.digest[:12]


@dataclass(frozen=True)
class Shell:
    page: Asset
    script: Asset
    style: Asset


def _static(name: str) -> bytes:
    return importlib.resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


@functools.cache
def shell() -> Shell:
    """The page, with its assets' URLs carrying their versions; read once per process."""
    script = Asset.of(_static("console.js"), "text/javascript; charset=utf-8")
    style = Asset.of(_static("console.css"), "text/css; charset=utf-8")
    page = (
        _static("console.html")
        .replace(b"{{script}}", f"console/console.js?v={script.version}".encode())
        .replace(b"{{style}}", f"console/console.css?v={style.version}".encode())
    )
    return Shell(Asset.of(page, "text/html; charset=utf-8"), script, style)


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        name, _, params = part.partition(";")
        if name.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower().removeprefix("q=")
            try:
                return not params.strip() or float(quality) > 0
            except ValueError:
                return False
    return False


def _send(
    request: Request, asset: Asset, cache: str, headers: dict[str, str] | None = None
) -> Response:
    """``asset``, gzipped when the client takes it; 304 when the client has it."""
    zipped = _accepts_gzip(request.headers.get("accept-encoding", ""))
    etag = f'"{asset.digest}{"-gz" if zipped else ""}"'
    head = {"ETag": etag, "Cache-Control": cache, "Vary": "Accept-Encoding", **(headers or {})}
    known = {
        t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")
    }
    if etag in known or "*" in known:
        return Response(status_code=304, headers=head)
    if zipped:
        head["Content-Encoding"] = "gzip"
    return Response(
        asset.gzipped if zipped else asset.body, media_type=asset.media_type, headers=head
    )


# -- the JSON endpoints -----------------------------------------------------------------


def plain(value: Any) -> Any:
    """A database value as ``indexer status --json`` writes it: an interval in seconds, a
    time in ISO 8601, a numeric as a float; dicts and lists value by value."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _json(data: Any) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _storable(text: str, what: str) -> str:
    """422 for what PostgreSQL cannot take as text (a NUL, a lone surrogate)."""
    if "\x00" in text:
        raise ValueError(f"{what} holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} holds invalid Unicode (a lone surrogate)") from None
    return text


class RetryRequest(_Body):
    """Either ``rows`` (failed rows' ids) or ``source`` (a source's failed documents:
    all of them, or those whose ``keys`` are given)."""

    rows: list[int] | None = Field(default=None, min_length=1, max_length=MAX_FAILED_SHOWN)
    source: str | None = None
    keys: list[str] | None = Field(default=None, min_length=1, max_length=MAX_FAILED_SHOWN)

    @model_validator(mode="after")
    def _one(self) -> RetryRequest:
        if (self.rows is None) == (self.source is None):
            raise ValueError('give either "rows" (ids of failed rows) or "source" (a name)')
        if self.keys is not None and self.source is None:
            raise ValueError('"keys" are the keys of failed documents of "source"')
        return self

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        return None if value is None else _storable(value, "the source")

    @field_validator("keys")
    @classmethod
    def _keys(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_storable(k, "a key") for k in value]


class SpanIn(_Body):
    source: str
    key: str
    char_start: int = Field(ge=0)
    char_end: int = Field(ge=0)

    @field_validator("source", "key")
    @classmethod
    def _text(cls, value: str) -> str:
        return _storable(value, "a source or key")


class ContextRequest(_Body):
    passages: list[SpanIn] = Field(max_length=MAX_SPANS)
    around: int = Field(default=240, ge=0, le=MAX_AROUND)


def _require_json(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise BodyError(422, "send a JSON body with the header Content-Type: application/json")


async def _in_thread(res: Resources, work: Callable[[], T]) -> T:
    """``work`` (Store calls) in a thread of /search's own, within its deadline: the
    console's reads wait for the same connections as searches, never on the event loop."""
    deadline = res.limits.search_deadline
    try:
        with anyio.fail_after(deadline):
            return await anyio.to_thread.run_sync(
                work, limiter=res.search_threads, abandon_on_cancel=True
            )
    except TimeoutError:
        raise DatabaseUnavailable(
            f"the database did not answer within {deadline:g} s "
            "(it is slow or away, or too many requests are waiting)"
        ) from None


def _overview(res: Resources) -> dict[str, Any]:
    status = res.store.status()
    sources = res.store.source_status()
    res.outage.up()
    return {
        "status": plain(status),
        "sources": plain(sources),
        "model": res.embedder.name,
        "dim": res.embedder.dim,
    }


def _failures(res: Resources, limit: int) -> dict[str, Any]:
    return {
        "rows": plain(res.store.failed_rows(limit)),
        "documents": plain(res.store.failed_documents(limit)),
        "limit": limit,
    }


def _retry(res: Resources, raw: bytes) -> dict[str, Any]:
    body = parse_body(raw, RetryRequest, res.limits)
    if body.rows is not None:
        return {"rows": res.store.retry_failed(body.rows)}
    return {"documents": res.store.retry_failed_documents(body.source, body.keys)}


def _context(res: Resources, raw: bytes) -> dict[str, Any]:
    """Each passage's text in its document's current text, with ``around`` characters
    on either side; None for a document that is gone."""
    body = parse_body(raw, ContextRequest, res.limits)
    around = body.around
    spans = [
        Span(p.source, p.key, max(0, p.char_start - around), max(p.char_start, p.char_end) + around)
        for p in body.passages
    ]
    texts = res.store.span_texts(spans)
    contexts: list[dict[str, Any] | None] = []
    for passage, span, text in zip(body.passages, spans, texts, strict=True):
        if text is None:
            contexts.append(None)
            continue
        start, end = passage.char_start - span.start, passage.char_end - span.start
        contexts.append(
            {
                "before": text[:start],
                "passage": text[start:end],
                "after": text[end:],
                "from_start": span.start == 0,
                "to_end": len(text) < span.end - span.start,
            }
        )
    return {"contexts": contexts}


def _limit(request: Request) -> int:
    given = request.query_params.get("limit")
    if given is None:
        return FAILED_SHOWN
    if not given.isdigit() or not 1 <= int(given) <= MAX_FAILED_SHOWN:
        raise HTTPException(422, f"limit must be an integer from 1 to {MAX_FAILED_SHOWN}")
    return int(given)


def router(res: Resources) -> APIRouter:
    """The console's routes over the API's resources (its Store, limits, threads)."""
    api = APIRouter(include_in_schema=False)

    @api.get("/")
    async def page(request: Request) -> Response:
        return _send(request, shell().page, REVALIDATE, PAGE_HEADERS)

    @api.get("/console/console.js")
    async def script(request: Request) -> Response:
        asset = shell().script
        fresh = request.query_params.get("v") == asset.version
        return _send(request, asset, FOREVER if fresh else REVALIDATE)

    @api.get("/console/console.css")
    async def style(request: Request) -> Response:
        asset = shell().style
        fresh = request.query_params.get("v") == asset.version
        return _send(request, asset, FOREVER if fresh else REVALIDATE)

    @api.get(f"{API}/overview")
    async def overview() -> Response:
        """indexer_status and indexer_source_status, as ``indexer status --json``."""
        return _json(await _in_thread(res, lambda: _overview(res)))

    @api.get(f"{API}/failures")
    async def failures(request: Request) -> Response:
        """The failed rows and documents, each with its error (``limit`` of each)."""
        limit = _limit(request)
        return _json(await _in_thread(res, lambda: _failures(res, limit)))

    @api.get(f"{API}/throughput")
    async def throughput() -> Response:
        """The last hour of the events, minute by minute."""
        minutes = await _in_thread(res, res.store.throughput)
        return _json({"minutes": plain(minutes)})

    @api.post(f"{API}/retry")
    async def retry(request: Request) -> Response:
        """Re-queue failed rows by id, or a source's failed documents."""
        _require_json(request)
        raw = await request.body()
        return _json(await _in_thread(res, lambda: _retry(res, raw)))

    @api.post(f"{API}/context")
    async def context(request: Request) -> Response:
        """The text around passages of documents (a document search's results)."""
        _require_json(request)
        raw = await request.body()
        return _json(await _in_thread(res, lambda: _context(res, raw)))

    return api
