"""uvicorn in a background thread of the daemon, and the ``--http HOST:PORT`` address.

The worker keeps the main thread and the signal handlers; the API runs beside it.
uvicorn's h11 protocol is extended (:class:`GuardedProtocol`) with a deadline on
request heads and a cap on open sockets that evicts idle ones, since uvicorn's own
``limit_concurrency`` counts sockets that never sent a request and answers every
request, /health included, with a plain-text 503 while they stay open.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from typing import Any, ClassVar

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from indexer.exceptions import ConfigurationError, first_line
from indexer.http.bounds import HttpLimits
from indexer.http.middleware import error_body
from indexer.http.resources import Resources

#: Open sockets; a new one past it closes the oldest one with no request in progress.
MAX_CONNECTIONS = HttpLimits.max_connections


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus:

    - a head deadline: a connection that has not sent a complete request head within
      ``limits.head_timeout`` of connecting (or of its previous answer) is closed;
    - a socket cap: past ``limits.max_connections`` open sockets, each new one closes
      the oldest socket that has no request in progress (idle or still sending its
      head), so that idle and slow clients can never lock out /health;
    - a malformed request (bad Content-Length, bad header) gets a JSON 400.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()

    _head_timer: asyncio.TimerHandle | None = None
    _waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()
        self._evict()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._idle():
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        body = error_body("invalid HTTP request (malformed request line or headers)")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            output = self.conn.send(event)
            if output:
                self.transport.write(output)
        self.transport.close()

    def _idle(self) -> bool:
        """No request in progress: waiting for (or reading) a request head."""
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and self._idle():
            self.transport.close()

    def _evict(self) -> None:
        over = len(self.connections) - self.limits.max_connections
        if over <= 0:
            return
        idle = sorted(
            (
                c
                for c in self.connections
                if isinstance(c, GuardedProtocol)
                and c is not self
                and c._idle()
                and not c.transport.is_closing()
            ),
            key=lambda c: c._waiting_since,
        )
        for connection in idle[:over]:
            connection.transport.close()
            over -= 1
        if over > 0:  # every other socket has a request in progress
            self.transport.close()


def _protocol(limits: HttpLimits) -> type[GuardedProtocol]:
    """GuardedProtocol bound to ``limits`` (uvicorn builds protocols from a class)."""

    class Protocol(GuardedProtocol):
        pass

    Protocol.limits = limits
    return Protocol


_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


def parse_address(text: str, given_as: str | None = None) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; ``"[::1]:8080"`` -> ``("::1", 8080)``.

    ``given_as``: how the error names the value (default ``--http 'text'``; the CLI passes
    ``INDEXER_HTTP='text'`` when it came from the environment)."""
    match = _ADDRESS.match(text.strip())
    port = int(match["port"]) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ConfigurationError(
            f"{given_as or f'--http {text!r}'} is not HOST:PORT with a port from 1 to 65535 "
            "(e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080)"
        )
    return match["v6"] or match["host"], port


class HttpServer:
    """uvicorn in a background thread, on a socket bound before it starts.

    Binding here (not in uvicorn) turns "address in use" into a one-line
    ConfigurationError and tells the bound port when ``port`` is 0.  uvicorn installs
    no signal handlers outside the main thread: the daemon keeps SIGINT/SIGTERM.
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Listen, serve in a thread, and return once requests are answered."""
        try:
            self._serve(timeout)
        except BaseException:
            self._close_resources()  # the app's Stores opened their pools when it was made
            raise

    def _serve(self, timeout: float) -> None:
        sock = _bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        resources = getattr(self.app.state, "indexer", None)
        limits = resources.limits if isinstance(resources, Resources) else HttpLimits()
        protocol: Any = _protocol(limits)
        config = uvicorn.Config(
            self.app,
            http=protocol,
            loop="asyncio",
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            # No limit_concurrency: GuardedProtocol caps sockets, LimitRequests requests.
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
        )
        server = uvicorn.Server(config)

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # reported by start(); the thread just ends
                self._failure = exc
            finally:
                sock.close()

        self._server = server
        self._thread = threading.Thread(target=serve, name="indexer-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                failure = self._failure
                reason = (
                    first_line(failure)
                    if failure is not None and not isinstance(failure, SystemExit)
                    else "it did not start (see the log)"
                )
                raise ConfigurationError(f"the HTTP API on {self.url} failed: {reason}")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: finish answered requests (up to a few seconds), then close."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        self._close_resources()  # in case a forced exit skipped the app's shutdown
        self._server = self._thread = None

    def _close_resources(self) -> None:
        """What the app's lifespan closes, for when it never ran or did not end."""
        resources = getattr(self.app.state, "indexer", None)
        if isinstance(resources, Resources):
            resources.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def _bind(host: str, port: int) -> socket.socket:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {where}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigurationError(f"cannot listen on {where}: {reason}") from None
    sock.setblocking(False)
    return sock
