"""Errors of the /v1 routes in the shape OpenAI's clients read:
``{"error": {"message", "type", "param", "code"}}``.

The rest of the API answers ``{"error": "one line"}``, written in many places (the
middlewares that refuse a request before any route runs, the error handlers of
:mod:`indexer.http.errors`).  Rather than teach each of them a second shape,
:class:`OpenAIShape` rewrites such an answer on its way out when its path is under
``/v1/``; the /v1 routes' own errors, which know the parameter at fault, raise
:class:`OpenAIError` and are written in that shape from the start (and left alone).
:func:`openai_error` is the one place the shape is written.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The paths whose errors take OpenAI's shape.
PREFIX = "/v1/"

#: OpenAI's own code for a refused API key, which its clients' users search for.
_CODES = {401: "invalid_api_key"}


class OpenAIError(Exception):
    """A /v1 request refused: its status, one line, and the parameter and code at fault."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The body of an error answer in OpenAI's shape."""
    return {
        "error": {
            "message": message,
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "param": param,
            "code": code if code is not None else _CODES.get(status),
        }
    }


def reshaped(status: int, body: bytes) -> bytes:
    """``{"error": "one line"}`` as :func:`openai_error`; any other body unchanged."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return body
    return json.dumps(openai_error(status, data["error"])).encode()


class OpenAIShape:
    """Rewrite the error answers (status 400 and up) of paths under ``/v1/`` into
    OpenAI's shape; every other answer passes through untouched, as it is sent.

    An error answer is held until its last part (they are one short JSON object), so
    that its Content-Length can be set to the rewritten body's.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        parts: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and int(message["status"]) >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status = int(held["status"])
            body = reshaped(status, b"".join(parts))
            headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)
