"""uvicorn in a background thread of the daemon, and the ``--http HOST:PORT`` address.

The worker keeps the main thread and the signal handlers; the API runs beside it.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from indexer.exceptions import ConfigurationError, first_line
from indexer.http.resources import Resources

#: Open connections uvicorn serves at once; more get a 503.
MAX_CONNECTIONS = 64

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; ``"[::1]:8080"`` -> ``("::1", 8080)``."""
    match = _ADDRESS.match(text.strip())
    port = int(match["port"]) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ConfigurationError(
            f"--http {text!r} is not HOST:PORT with a port from 1 to 65535 "
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
        config = uvicorn.Config(
            self.app,
            http="h11",
            loop="asyncio",
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,
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
