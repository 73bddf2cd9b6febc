"""Plain ASGI middlewares around the app: token, request limit, body limit and memory
budget, catch-all, request counting.

Plain ASGI rather than FastAPI's decorators: the body limit must act before the body
is read, and the catch-all and the counter must see what the app sends even when it
raises.  None of them needs FastAPI, so each can be driven with a bare ASGI app.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Collection, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.http.bounds import BODY_COST, HttpLimits
from indexer.metrics import Metrics

logger = logging.getLogger(__name__)

#: Bytes in one request body, checked before the body is read whole.
MAX_BODY_BYTES = HttpLimits.max_body_bytes

#: Paths that no token guards and no request limit refuses: a load balancer's check
#: must get through, and it reads nothing but the database's state.
OPEN_PATHS = ("/health",)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def _send_error(
    send: Send,
    status: int,
    message: str,
    *,
    close: bool = False,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """The API's error body, sent by hand where no route (and so no handler) runs."""
    body = error_body(message)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head.extend(headers)
    if close:
        # The client may still be sending a body nobody will read.
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class MemoryBudget:
    """Bytes that the request bodies in progress hold together, at most ``limit``.

    Used from the event loop only (the middleware), so it needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class RequireToken:
    """With ``tokens`` (non-empty), every path but ``open_paths`` (/health) needs
    ``Authorization: Bearer <one of them>``; otherwise 401 with
    ``WWW-Authenticate: Bearer``.  Each token is compared in constant time, all of them
    every time, so the answer's timing tells nothing about which one came close.

    An empty credential (``Authorization: Bearer`` alone) never matches, even if a blank
    token slipped through: the settings refuse one, and this guard fails closed.
    """

    def __init__(
        self, app: ASGIApp, tokens: Sequence[str], open_paths: Collection[str] = OPEN_PATHS
    ) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.tokens or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() == b"bearer" and self._known(credential.strip()):
            await self.app(scope, receive, send)
            return
        message = (
            "this API needs a token: send the header Authorization: Bearer <token>"
            if not given
            else "the token is not valid"
        )
        challenge = b'Bearer realm="indexer"'
        if given:
            challenge += b', error="invalid_token"'
        await _send_error(
            send, 401, message, close=True, headers=[(b"www-authenticate", challenge)]
        )

    def _known(self, credential: bytes) -> bool:
        found = False
        for token in self.tokens:
            found |= hmac.compare_digest(credential, token)
        return found and credential != b""


class LimitRequests:
    """At most ``limit`` requests in progress (/health not counted); more get 503."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.running = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.running >= self.limit:
            message = f"the server is busy ({self.limit} requests in progress); try again shortly"
            await _send_error(send, 503, message, close=True, headers=[(b"retry-after", b"1")])
            return
        self.running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.running -= 1


class LimitBody:
    """Refuse bodies over ``limit`` bytes (413) before reading them whole, keep all
    bodies in progress within ``budget`` (503), and give each ``timeout`` seconds to
    arrive (408).

    A declared Content-Length is checked, and charged to the budget (``BODY_COST``
    times), before any of the body is read; a chunked body is charged as it arrives
    and refused as soon as it passes the limit or the budget.  The charge is given
    back when the app has answered.  The accepted body is handed on unchanged.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int = MAX_BODY_BYTES,
        budget: MemoryBudget | None = None,
        timeout: float = HttpLimits.body_timeout,
    ) -> None:
        self.app = app
        self.limit = limit
        self.budget = budget or MemoryBudget(HttpLimits.memory_budget)
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        charge = _Charge(self.budget)
        try:
            body = await self._read(scope, receive, send, charge)
            if body is None:
                return
            replayed = False

            async def replay() -> Message:
                # The body once, then the real channel (a disconnect, for streaming apps).
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            charge.give_back()

    async def _read(
        self, scope: Scope, receive: Receive, send: Send, charge: _Charge
    ) -> bytes | None:
        """The whole body, or None once the answer to a refused one is sent."""
        too_large = f"the request body is larger than {self.limit} bytes"
        busy = "the server is busy (too many large requests in progress); try again shortly"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, 400, "invalid Content-Length header", close=True)
                return None
            if int(declared) > self.limit:
                await _send_error(send, 413, too_large, close=True)
                return None
            if not charge.take(int(declared) * BODY_COST):
                await _send_error(send, 503, busy, close=True, headers=[(b"retry-after", b"1")])
                return None
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    part = message.get("body", b"")
                    size += len(part)
                    if size > self.limit:
                        await _send_error(send, 413, too_large, close=True)
                        return None
                    if size * BODY_COST > charge.taken and not charge.take(
                        size * BODY_COST - charge.taken
                    ):
                        headers = [(b"retry-after", b"1")]
                        await _send_error(send, 503, busy, close=True, headers=headers)
                        return None
                    parts.append(part)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            message_text = f"the request body did not arrive within {self.timeout:g} s"
            await _send_error(send, 408, message_text, close=True)
            return None
        body = b"".join(parts)
        del parts
        return body


class _Charge:
    """What one request has taken from the budget, given back once."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.taken = 0

    def take(self, size: int) -> bool:
        if not self.budget.take(size):
            return False
        self.taken += size
        return True

    def give_back(self) -> None:
        self.budget.give(self.taken)
        self.taken = 0


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
