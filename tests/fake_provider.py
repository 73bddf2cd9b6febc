"""A scriptable OpenAI-compatible embeddings server for tests: real HTTP on 127.0.0.1.

:class:`FakeProvider` serves ``POST /v1/embeddings`` with deterministic unit vectors
(:meth:`FakeProvider.vector`: from the sha256 of each input) and a correct ``usage``.
Faults are served on demand: :meth:`FakeProvider.script` queues one :class:`Fault` per
coming request; ``throttle_every=3`` answers every third request with a 429 and
``Retry-After: 1``; ``fault_rate`` with ``random_faults`` serves faults at random (seeded);
any input holding ``refuse_marker`` gets a 400 in OpenAI's error shape.  Every request is
recorded (:attr:`FakeProvider.requests`: inputs, headers, the fault served), and so is the
most requests ever in flight at once (:attr:`FakeProvider.max_concurrent`).

Use it as a context manager, or through the :func:`fake_provider` fixture::

    with FakeProvider(dimension=16) as provider:
        config = RemoteConfig(url=provider.url, model="fake", dimension=16)
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest

FaultKind = Literal[
    "throttle",  # 429, with Retry-After: retry_after (none if None)
    "busy",  # 503, with Retry-After: retry_after (none if None)
    "status",  # `status` with an OpenAI-shaped error body (500 by default)
    "slow",  # the right answer after delay_s (or when the provider stops)
    "wrong_dimension",  # vectors a quarter as long (as base64 read as floats would be)
    "missing_vector",  # one vector fewer than inputs
    "base64",  # base64 strings where floats were asked
    "malformed",  # a 200 whose body is not JSON
    "nan",  # a NaN in the first vector
    "drop",  # the connection closed without an answer
    "truncated",  # half the body promised by Content-Length, then the connection closed
    "shuffled",  # the right vectors, listed in reverse order with their indices
    "no_usage",  # the right vectors, no usage
    "raw",  # `status`, `body` and `headers` as given (any bytes, any encoding)
    "flood",  # a 200 promising `size` bytes of spaces, written until the client leaves
    "trickle",  # the right answer, one byte every delay_s
]


@dataclass(frozen=True)
class Fault:
    """One faulty answer: ``kind`` says which (see :data:`FaultKind`)."""

    kind: FaultKind
    retry_after: str | None = "1"
    status: int = 500
    delay_s: float = 10.0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    size: int = 0


@dataclass(frozen=True)
class Recorded:
    """One request as the provider received it; ``fault`` is the fault served (None for
    a plain answer, "refused" for a 400 over a marked input)."""

    inputs: tuple[str, ...]
    headers: dict[str, str]
    body: dict[str, Any]
    fault: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    provider: FakeProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-answer (a test's timeout) is expected: nothing to report."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.server.provider.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read :attr:`FakeProvider.requests` instead."""


class FakeProvider:
    """An embeddings server on 127.0.0.1 (a free port); see the module's docstring.

    ``hold_until_concurrent=n`` holds every request until ``n`` have been in flight at
    once (or ``hold_timeout_s`` passed), so a test sees whether a client really sends
    ``n`` requests side by side.  ``echo_key_in_errors`` makes error messages repeat the
    bearer token, as careless providers do.
    """

    def __init__(
        self,
        dimension: int = 8,
        *,
        model: str = "fake-embedding",
        refuse_marker: str = "<refuse-me>",
        throttle_every: int | None = None,
        fault_rate: float = 0.0,
        random_faults: Sequence[Fault] = (),
        seed: int = 0,
        hold_until_concurrent: int | None = None,
        hold_timeout_s: float = 5.0,
        echo_key_in_errors: bool = False,
    ) -> None:
        self.dimension = dimension
        self.model = model
        self.refuse_marker = refuse_marker
        self.throttle_every = throttle_every
        self.fault_rate = fault_rate
        self.random_faults = tuple(random_faults)
        self.hold_until_concurrent = hold_until_concurrent
        self.hold_timeout_s = hold_timeout_s
        self.echo_key_in_errors = echo_key_in_errors
        self._random = random.Random(seed)
        self._script: deque[Fault] = deque()
        self._requests: list[Recorded] = []
        #: Bytes of each "flood" answer written before the client left.
        self.flooded: list[int] = []
        self._count = 0
        self._active = 0
        self._max_active = 0
        self._state = threading.Condition()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeProvider:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.provider = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests still held (slow ones) are answered at once."""
        self._stopping.set()
        with self._state:
            self._state.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API's base URL, ``/v1`` included."""
        assert self._server is not None, "start the provider first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # ------------------------------------------------------------------ scripting

    def script(self, *faults: Fault) -> None:
        """Serve these faults, in order, to the next requests (one each)."""
        with self._state:
            self._script.extend(faults)

    @property
    def requests(self) -> list[Recorded]:
        with self._state:
            return list(self._requests)

    @property
    def max_concurrent(self) -> int:
        with self._state:
            return self._max_active

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        """The vector this provider answers for ``text``: a unit vector seeded by the
        text's sha256."""
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        v = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(
            self.dimension
        )
        unit: npt.NDArray[np.float32] = (v / np.linalg.norm(v)).astype(np.float32)
        return unit

    @staticmethod
    def prompt_tokens(text: str) -> int:
        """The tokens this provider reports for ``text`` (fewer than its UTF-8 bytes)."""
        return max(1, len(text.encode("utf-8")) // 4)

    # ------------------------------------------------------------------ serving

    def handle(self, handler: _Handler) -> None:
        """Answer one request (in the server's thread for it)."""
        with self._state:
            self._active += 1
            self._max_active = max(self._max_active, self._active)
            self._state.notify_all()
            if self.hold_until_concurrent is not None:
                self._state.wait_for(
                    lambda: (
                        self._max_active >= (self.hold_until_concurrent or 0)
                        or self._stopping.is_set()
                    ),
                    timeout=self.hold_timeout_s,
                )
        try:
            self._answer(handler)
        except OSError:
            handler.close_connection = True  # the client left (its timeout)
        finally:
            with self._state:
                self._active -= 1

    def _answer(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        raw = handler.rfile.read(length)
        if handler.path != "/v1/embeddings":
            _send_json(handler, 404, {"error": {"message": f"no route {handler.path}"}})
            return
        body = json.loads(raw)
        inputs = body.get("input")
        texts = tuple(inputs) if isinstance(inputs, list) else (str(inputs),)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        fault = self._next_fault()
        refused = fault is None and any(self.refuse_marker in t for t in texts)
        with self._state:
            kind = fault.kind if fault else ("refused" if refused else None)
            self._requests.append(Recorded(texts, headers, body, kind))
        if refused:
            self._refuse(handler, texts, headers)
        elif fault is not None:
            self._serve_fault(handler, fault, texts, headers)
        else:
            _send_json(handler, 200, self._payload(texts))

    def _next_fault(self) -> Fault | None:
        with self._state:
            self._count += 1
            if self._script:
                return self._script.popleft()
            if self.throttle_every and self._count % self.throttle_every == 0:
                return Fault("throttle", retry_after="1")
            if self.random_faults and self._random.random() < self.fault_rate:
                return self._random.choice(self.random_faults)
        return None

    def _refuse(self, handler: _Handler, texts: tuple[str, ...], headers: dict[str, str]) -> None:
        marked = [i for i, t in enumerate(texts) if self.refuse_marker in t]
        message = f"input {marked[0]} contains refused content"
        if self.echo_key_in_errors:
            message += f" (you sent {headers.get('authorization', 'no key')})"
        error = {"message": message, "type": "invalid_request_error", "code": None}
        _send_json(handler, 400, {"error": error})

    def _serve_fault(
        self, handler: _Handler, fault: Fault, texts: tuple[str, ...], headers: dict[str, str]
    ) -> None:
        kind = fault.kind
        if kind in ("throttle", "busy"):
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            status = 429 if kind == "throttle" else 503
            _send_json(handler, status, {"error": {"message": "slow down"}}, extra)
        elif kind == "status":
            message = f"fake status {fault.status}"
            if self.echo_key_in_errors:
                message += f" for {headers.get('authorization', 'no key')}"
            _send_json(handler, fault.status, {"error": {"message": message}})
        elif kind == "slow":
            self._stopping.wait(fault.delay_s)
            _send_json(handler, 200, self._payload(texts))
        elif kind == "drop":
            handler.close_connection = True
        elif kind == "truncated":
            data = json.dumps(self._payload(texts)).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.close_connection = True
        elif kind == "raw":
            handler.send_response(fault.status)
            for name, value in fault.headers:
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(fault.body)))
            handler.end_headers()
            handler.wfile.write(fault.body)
        elif kind == "flood":
            self._flood(handler, fault.size)
        elif kind == "trickle":
            self._trickle(handler, json.dumps(self._payload(texts)).encode(), fault.delay_s)
        elif kind == "malformed":
            _send_bytes(handler, 200, b'{"data": [{"embedding": [0.1, ')
        else:
            _send_json(handler, 200, self._bad_payload(kind, texts))

    def _flood(self, handler: _Handler, size: int) -> None:
        """Promise ``size`` bytes and write spaces until they are sent or the client
        leaves; record how many were written."""
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        block, sent = b" " * 65536, 0
        handler.close_connection = True
        try:
            while sent < size and not self._stopping.is_set():
                piece = block[: size - sent]
                handler.wfile.write(piece)
                sent += len(piece)
        finally:
            with self._state:
                self.flooded.append(sent)

    def _trickle(self, handler: _Handler, data: bytes, delay_s: float) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.close_connection = True
        for i in range(len(data)):
            if self._stopping.wait(delay_s):
                return
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()

    def _payload(self, texts: Sequence[str]) -> dict[str, Any]:
        data = [
            {"object": "embedding", "index": i, "embedding": self.vector(t).tolist()}
            for i, t in enumerate(texts)
        ]
        tokens = sum(self.prompt_tokens(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _bad_payload(self, kind: str, texts: Sequence[str]) -> dict[str, Any]:
        """The answer of the faults that change the payload only."""
        payload = self._payload(texts)
        data: list[dict[str, Any]] = payload["data"]
        if kind == "wrong_dimension":
            for item in data:
                item["embedding"] = item["embedding"][: max(1, self.dimension // 4)]
        elif kind == "missing_vector":
            data.pop()
        elif kind == "base64":
            for item, text in zip(data, texts, strict=True):
                item["embedding"] = base64.b64encode(self.vector(text).tobytes()).decode()
        elif kind == "nan":
            data[0]["embedding"][0] = float("nan")
        elif kind == "shuffled":
            data.reverse()
        elif kind == "no_usage":
            del payload["usage"]
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return payload


def _send_json(
    handler: _Handler, status: int, payload: object, headers: dict[str, str] | None = None
) -> None:
    _send_bytes(handler, status, json.dumps(payload).encode(), headers)


def _send_bytes(
    handler: _Handler, status: int, data: bytes, headers: dict[str, str] | None = None
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def fake_provider() -> Iterator[FakeProvider]:
    """A started :class:`FakeProvider` (8 dimensions), stopped after the test."""
    with FakeProvider() as provider:
        yield provider
