"""The HTTP API's ASGI middlewares, driven directly: no sockets, no database, no model.

Each test wraps a tiny ASGI app, feeds the middleware the messages a server would
(``receive``) and reads back what it answers (``send``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.http.bounds import BODY_COST
from indexer.http.middleware import (
    CatchAll,
    CountRequests,
    LimitBody,
    LimitRequests,
    MemoryBudget,
    RequireToken,
)
from indexer.metrics import Metrics

LIMIT = 10


@dataclass
class Exchange:
    """One request through an ASGI app: what it was told and what it answered."""

    sent: list[Message] = field(default_factory=list)
    received: int = 0  # messages the app (or middleware) asked for

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def request(
    app: ASGIApp,
    parts: Sequence[bytes] = (b"",),
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    path: str = "/embed",
    disconnect_after: int | None = None,
    stall_after: int | None = None,
) -> Exchange:
    """POST ``parts`` (one ``http.request`` message each) to ``app`` and collect its answer."""
    exchange = Exchange()
    scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}

    async def receive() -> Message:
        index = exchange.received
        exchange.received += 1
        if index == stall_after:
            await asyncio.sleep(3600)  # a client that stops sending
        if index >= len(parts) or index == disconnect_after:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": parts[index], "more_body": index < len(parts) - 1}

    async def send(message: Message) -> None:
        exchange.sent.append(message)

    drive(app(scope, receive, send))
    return exchange


def drive(call: Awaitable[None]) -> None:
    """Run one ASGI call to its end (an ASGI app returns an awaitable, not a coroutine)."""

    async def main() -> None:
        await call

    asyncio.run(main())


@dataclass
class Echo:
    """Answers 200 with the body it read, and remembers the messages that carried it."""

    calls: int = 0
    messages: list[Message] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            self.messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def fail_before_answering(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom")


async def fail_while_answering(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("boom halfway")


def answer(status: int) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def error_of(exchange: Exchange) -> object:
    assert exchange.headers[b"content-type"] == b"application/json"
    assert int(exchange.headers[b"content-length"]) == len(exchange.body)
    return json.loads(exchange.body)


# -- LimitBody ------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_refused_before_any_body_is_read() -> None:
    echo = Echo()
    exchange = request(LimitBody(echo, LIMIT), [b"x" * 11], headers=[(b"content-length", b"11")])
    assert exchange.status == 413
    assert error_of(exchange) == {"error": f"the request body is larger than {LIMIT} bytes"}
    assert exchange.headers[b"connection"] == b"close"
    assert exchange.received == 0 and echo.calls == 0


def test_a_declared_length_at_the_limit_is_handed_on() -> None:
    echo = Echo()
    exchange = request(LimitBody(echo, LIMIT), [b"x" * LIMIT], headers=[(b"content-length", b"10")])
    assert (exchange.status, exchange.body) == (200, b"x" * LIMIT)


def test_an_invalid_content_length_is_400() -> None:
    echo = Echo()
    exchange = request(LimitBody(echo, LIMIT), headers=[(b"content-length", b"-1")])
    assert exchange.status == 400
    assert error_of(exchange) == {"error": "invalid Content-Length header"}
    assert echo.calls == 0


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    # No Content-Length: 4 + 4 + 4 bytes pass the limit of 10 in the third part; the
    # fourth and fifth are never asked for.
    echo = Echo()
    exchange = request(LimitBody(echo, LIMIT), [b"abcd"] * 5)
    assert exchange.status == 413
    assert "larger than 10 bytes" in str(error_of(exchange))
    assert exchange.received == 3 and echo.calls == 0


def test_a_chunked_body_within_the_limit_reaches_the_app_whole() -> None:
    echo = Echo()
    exchange = request(LimitBody(echo, LIMIT), [b"ab", b"", b"cdefgh", b"ij"])
    assert (exchange.status, exchange.body) == (200, b"abcdefghij")
    assert echo.messages == [{"type": "http.request", "body": b"abcdefghij", "more_body": False}]


def test_a_client_that_leaves_mid_body_gets_no_answer() -> None:
    echo = Echo()
    exchange = request(LimitBody(echo, LIMIT), [b"ab", b"cd"], disconnect_after=1)
    assert exchange.sent == [] and echo.calls == 0


# -- CatchAll -------------------------------------------------------------------------


def test_an_unexpected_exception_is_a_json_500_and_a_logged_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="indexer.http.middleware"):
        exchange = request(CatchAll(fail_before_answering))
    assert exchange.status == 500
    assert error_of(exchange) == {"error": "internal error (see the daemon's log)"}
    assert b"boom" not in exchange.body
    (record,) = caplog.records
    assert record.getMessage() == "POST /embed failed"
    assert record.exc_info is not None and str(record.exc_info[1]) == "boom"


def test_an_exception_after_the_answer_started_sends_nothing_more() -> None:
    exchange = request(CatchAll(fail_while_answering))
    assert [m["type"] for m in exchange.sent] == ["http.response.start"]
    assert exchange.status == 200


def test_a_failure_outside_http_is_left_to_the_server() -> None:
    # A failed lifespan startup must stop the server, not be answered as a request.
    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        raise AssertionError(f"nothing should be sent: {message}")

    with pytest.raises(RuntimeError, match="boom"):
        drive(CatchAll(fail_before_answering)({"type": "lifespan"}, receive, send))


def test_an_answered_request_passes_through_the_catch_all_unchanged() -> None:
    exchange = request(CatchAll(Echo()), [b"hello"])
    assert (exchange.status, exchange.body) == (200, b"hello")


# -- CountRequests --------------------------------------------------------------------


def count(metrics: Metrics, endpoint: str, status: int) -> float:
    labels = {"endpoint": endpoint, "status": str(status)}
    return metrics.registry.get_sample_value("indexer_http_requests_total", labels) or 0.0


def latencies(metrics: Metrics, endpoint: str) -> float:
    labels = {"endpoint": endpoint}
    return metrics.registry.get_sample_value("indexer_http_request_seconds_count", labels) or 0.0


def test_requests_are_counted_by_endpoint_and_status() -> None:
    metrics = Metrics()
    endpoints = ("/embed", "/search")
    request(CountRequests(answer(200), metrics, endpoints), path="/embed")
    request(CountRequests(answer(200), metrics, endpoints), path="/embed")
    request(CountRequests(answer(413), metrics, endpoints), path="/search")
    assert count(metrics, "/embed", 200) == 2
    assert count(metrics, "/search", 413) == 1
    assert count(metrics, "/search", 200) == 0
    assert latencies(metrics, "/embed") == 2 and latencies(metrics, "/search") == 1


def test_unknown_paths_count_as_other() -> None:
    metrics = Metrics()
    for path in ("/nowhere", "/embed/extra", "/"):
        request(CountRequests(answer(404), metrics, ("/embed",)), path=path)
    assert count(metrics, "other", 404) == 3
    assert count(metrics, "/embed", 404) == 0


def test_a_request_whose_app_raises_counts_as_500() -> None:
    metrics = Metrics()
    with pytest.raises(RuntimeError, match="boom"):
        request(CountRequests(fail_before_answering, metrics, ("/embed",)))
    assert count(metrics, "/embed", 500) == 1


def test_the_catch_all_inside_the_counter_is_counted_as_its_500() -> None:
    # The order create_app stacks them in: the counter sees what the catch-all sends.
    metrics = Metrics()
    exchange = request(CountRequests(CatchAll(fail_before_answering), metrics, ("/embed",)))
    assert exchange.status == 500
    assert count(metrics, "/embed", 500) == 1


# -- LimitBody: the memory budget and the body deadline -------------------------------


def test_a_declared_body_over_the_budget_is_503_before_it_is_read() -> None:
    echo = Echo()
    budget = MemoryBudget(5 * BODY_COST - 1)
    exchange = request(
        LimitBody(echo, LIMIT, budget), [b"x" * 5], headers=[(b"content-length", b"5")]
    )
    assert exchange.status == 503
    assert "busy" in str(error_of(exchange))
    assert exchange.headers[b"retry-after"] == b"1"
    assert exchange.received == 0 and echo.calls == 0 and budget.used == 0


def test_a_chunked_body_is_charged_as_it_arrives_and_everything_is_given_back() -> None:
    budget = MemoryBudget(6 * BODY_COST)
    refused = request(LimitBody(Echo(), LIMIT, budget), [b"abc", b"def", b"g"])
    assert refused.status == 503 and refused.received == 3
    assert budget.used == 0
    accepted = request(LimitBody(Echo(), LIMIT, budget), [b"abc", b"def"])
    assert (accepted.status, accepted.body) == (200, b"abcdef")
    assert budget.used == 0


def test_the_budget_is_held_while_the_app_runs() -> None:
    budget = MemoryBudget(100)
    seen: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        seen.append(budget.used)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    request(LimitBody(app, LIMIT, budget), [b"abcd"], headers=[(b"content-length", b"4")])
    assert seen == [4 * BODY_COST] and budget.used == 0


def test_a_body_that_stops_arriving_is_408() -> None:
    echo = Echo()
    budget = MemoryBudget(1000)
    exchange = request(LimitBody(echo, LIMIT, budget, timeout=0.05), [b"ab", b"cd"], stall_after=1)
    assert exchange.status == 408
    assert error_of(exchange) == {"error": "the request body did not arrive within 0.05 s"}
    assert exchange.headers[b"connection"] == b"close"
    assert echo.calls == 0 and budget.used == 0


# -- LimitRequests --------------------------------------------------------------------


def test_requests_past_the_limit_are_json_503_but_health_is_never_refused() -> None:
    limited = LimitRequests(answer(200), limit=1)
    limited.running = 1  # one request in progress
    refused = request(limited, path="/search")
    assert refused.status == 503
    assert "busy" in str(error_of(refused))
    assert request(limited, path="/health").status == 200
    limited.running = 0
    assert request(limited, path="/search").status == 200
    assert limited.running == 0


# -- RequireToken ---------------------------------------------------------------------


def test_without_tokens_everything_is_open() -> None:
    assert request(RequireToken(answer(200), []), path="/embed").status == 200


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        (b"Bearer right", 200),
        (b"bearer right", 200),
        (b"Bearer other", 200),
        (b"Bearer wrong", 401),
        (b"Bearer righ", 401),
        (b"Basic right", 401),
        (b"right", 401),
    ],
)
def test_a_token_is_required_outside_health(header: bytes | None, status: int) -> None:
    guard = RequireToken(answer(200), ["right", "other"])
    headers = [] if header is None else [(b"authorization", header)]
    exchange = request(guard, headers=headers, path="/search")
    assert exchange.status == status
    if status == 401:
        assert exchange.headers[b"www-authenticate"].startswith(b"Bearer")
        assert "token" in str(error_of(exchange))
    assert request(RequireToken(answer(200), ["right"]), path="/health").status == 200


@pytest.mark.parametrize("header", [b"Bearer", b"Bearer ", b"Bearer   ", b"bearer \t"])
@pytest.mark.parametrize("tokens", [[""], ["right", ""]])
def test_an_empty_credential_never_matches(header: bytes, tokens: list[str]) -> None:
    # Even with a blank token among them (the settings refuse one): fail closed.
    exchange = request(RequireToken(answer(200), tokens), headers=[(b"authorization", header)])
    assert (exchange.status, error_of(exchange)) == (401, {"error": "the token is not valid"})


def test_the_token_never_appears_in_an_answer() -> None:
    exchange = request(
        RequireToken(answer(200), ["s3cret"]), headers=[(b"authorization", b"Bearer s3cre")]
    )
    assert exchange.status == 401 and b"s3cre" not in exchange.body
