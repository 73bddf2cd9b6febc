"""A throttling proxy in front of an embeddings server, for the remote row.

It answers one request in three ``429 Too Many Requests`` with ``Retry-After: 1``, as
a provider's rate limit would, and forwards the others unchanged to the server behind
it.  The remote embedder must wait those out and count them as deferrals, never as
failed attempts: the row checks that a throttled drain loses no row and how much
slower it is.  A tiny threaded server in the bench's own process: what it costs is
one extra local hop per request, paid by the throttled drain alone.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import httpx

#: Every this-many-th request is refused with 429.
THROTTLE_EVERY = 3
#: What the refusal's Retry-After says (seconds).
RETRY_AFTER_S = 1


class _Counter:
    """Requests seen and refused, shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen = 0
        self.throttled = 0

    def throttle(self) -> bool:
        """Count one request; True when it is to be refused."""
        with self.lock:
            self.seen += 1
            refuse = self.seen % THROTTLE_EVERY == 0
            self.throttled += refuse
            return refuse


class ThrottlingProxy:
    """``POST {url}/embeddings`` forwarded to ``upstream`` (a ``.../v1`` base URL), one
    request in :data:`THROTTLE_EVERY` answered 429 instead.  Use as a context manager:
    it serves on a free port of 127.0.0.1 until the block ends."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.counter = _Counter()
        self._client = httpx.Client(timeout=httpx.Timeout(120.0))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bench-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        """The proxy's base URL, ``/v1`` included (what a RemoteConfig's url takes)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> ThrottlingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        self._client.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a provider's API

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if proxy.counter.throttle():
                    self._answer(429, b'{"error": {"message": "slow down"}}', str(RETRY_AFTER_S))
                    return
                forwarded = proxy._client.post(
                    f"{proxy.upstream}{self.path.removeprefix('/v1')}",
                    content=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                )
                self._answer(forwarded.status_code, forwarded.content, None)

            def _answer(self, status: int, body: bytes, retry_after: str | None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Silent: the bench prints its own figures."""

        return Handler
