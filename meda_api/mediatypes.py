"""Request bodies must be declared ``application/json`` (415 otherwise).

A web page can send a cross-site POST without asking the server first only as a form
(``text/plain``, ``multipart/form-data``, ``application/x-www-form-urlencoded``); JSON
needs a CORS preflight. Bodyless requests (``curl -X POST .../start``) pass.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from meda_api.security import refuse
from meda_core.errors import UnsupportedMediaType

JSON = "application/json"


def _declares_json(content_type: bytes) -> bool:
    return content_type.split(b";", 1)[0].strip().lower() == JSON.encode()


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length", b"0").strip()
    return not (length.isdigit() and int(length) == 0)


class JsonBodies:
    """415 for a body that is not declared JSON, or a non-JSON ``Content-Type`` at all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            declared = headers.get(b"content-type")
            untyped_body = declared is None and _has_body(headers)
            if untyped_body or (declared is not None and not _declares_json(declared)):
                shown = (declared or b"none").decode("latin-1")[:100]
                error = UnsupportedMediaType(
                    f"request bodies must be sent as {JSON}, not {shown}", content_type=shown
                )
                await refuse(send, error)
                return
        await self.app(scope, receive, send)
