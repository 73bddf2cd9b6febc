"""Plain ASGI middlewares around the app: body limit, catch-all, request counting.

Plain ASGI rather than FastAPI's decorators: the body limit must act before the body
is read, and the catch-all and the counter must see what the app sends even when it
raises.  None of them needs FastAPI, so each can be driven with a bare ASGI app.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.metrics import Metrics

logger = logging.getLogger(__name__)

#: Bytes in one request body, checked before the body is read whole.
MAX_BODY_BYTES = 8 * 1024 * 1024


async def _send_error(send: Send, status: int, message: str, *, close: bool = False) -> None:
    """The API's error body, sent by hand where no route (and so no handler) runs."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        # The client may still be sending a body nobody will read.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitBody:
    """Refuse bodies over ``limit`` bytes (413) before reading them whole.

    A declared Content-Length is checked before any of the body is read; a chunked
    body is read up to the limit and refused as soon as it passes it.  The accepted
    body is handed on to the app unchanged.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the request body is larger than {self.limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, 400, "invalid Content-Length header", close=True)
                return
            if int(declared) > self.limit:
                await _send_error(send, 413, too_large, close=True)
                return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            part = message.get("body", b"")
            size += len(part)
            if size > self.limit:
                await _send_error(send, 413, too_large, close=True)
                return
            parts.append(part)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        del parts
        replayed = False

        async def replay() -> Message:
            # The body once, then the real channel (a disconnect, for streaming apps).
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class CatchAll:
    """An unexpected exception becomes a 500 ``{"error": ...}``; its traceback goes to the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if scope["type"] != "http":
                raise
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:  # a second response start would break the connection
                await _send_error(send, 500, "internal error (see the daemon's log)")


class CountRequests:
    """Feed the request counter and latency histogram of :class:`Metrics`.

    Paths outside ``endpoints`` count as ``"other"``, so that scanners probing random
    paths cannot grow the metrics without bound.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        status = 500  # what the client gets when the app raises before answering
        start = time.perf_counter()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)
