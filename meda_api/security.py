"""Bearer-token auth and a cap on request bodies, as plain ASGI middleware."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meda_api.observability import request_id
from meda_core.errors import MedaError, PayloadTooLarge, Unauthorized

MAX_BODY = 2 * 1024 * 1024  # user_data is capped at 1 MiB; JSON around it needs little


async def refuse(send: Send, error: MedaError, **headers: str) -> None:
    payload = error.to_body()
    payload["details"]["request_id"] = request_id.get()
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": error.http_status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


#: Where :class:`TokenAuth` leaves the token it accepted (in the request's state).
VERIFIED_TOKEN = "meda_verified_token"


class TokenAuth:
    """Every request must carry ``Authorization: Bearer <token>`` (compared in constant time).

    Requests over ``local_socket`` (a Unix socket) need none: its mode and group decide.
    """

    def __init__(self, app: ASGIApp, token: str, local_socket: str | None = None) -> None:
        self.app, self.expected, self.local_socket = app, f"Bearer {token}".encode(), local_socket

    def _over_local_socket(self, scope: Scope) -> bool:
        # uvicorn names a Unix socket's server (path, None); a TCP one has a port.
        server = scope.get("server")
        return self.local_socket is not None and server == (self.local_socket, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._over_local_socket(scope):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = Unauthorized("a valid bearer token is required")
                await refuse(send, error, **{"WWW-Authenticate": "Bearer"})
                return
            scope.setdefault("state", {})[VERIFIED_TOKEN] = given
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, by header or while they arrive.

    A body is read whole (it is small) before the app runs: the 413 then comes whether
    the body is chunked or not and whatever the route, even one that would answer before
    reading it, and the app never sees part of a body it may not have. Bodies ``raw``
    says are streamed (file uploads) pass unread: their route caps them itself.
    """

    def __init__(
        self, app: ASGIApp, limit: int = MAX_BODY, raw: Callable[[Scope], bool] | None = None
    ) -> None:
        self.app, self.limit, self.raw = app, limit, raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.raw is not None and self.raw(scope)):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await refuse(send, self._too_large())
            return
        if b"transfer-encoding" not in headers and declared in (b"", b"0"):
            await self.app(scope, receive, send)  # no body
            return
        try:
            body = await self._read(receive)
        except _TooLarge:
            await refuse(send, self._too_large())
            return
        except _Gone:
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            part: bytes = message.get("body", b"")
            size += len(part)
            if size > self.limit:
                raise _TooLarge
            parts.append(part)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over {self.limit} bytes", limit=self.limit)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, in one message; then what the connection says next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


class _Gone(Exception):
    pass


class _TooLarge(Exception):
    pass
