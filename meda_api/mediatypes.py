"""Request bodies must be declared ``application/json`` (415 otherwise).

A web page can send a cross-site POST without asking the server first only as a form
(``text/plain``, ``multipart/form-data``, ``application/x-www-form-urlencoded``); JSON
needs a CORS preflight. Bodyless requests (``curl -X POST .../start``) pass.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from meda_api.security import refuse
from meda_core.errors import UnsupportedMediaType

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"


def declares(content_type: bytes, media_type: str) -> bool:
    return content_type.split(b";", 1)[0].strip().lower() == media_type.encode()


def _declares_json(content_type: bytes) -> bool:
    return declares(content_type, JSON)


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length", b"0").strip()
    return not (length.isdigit() and int(length) == 0)


def raw_body(scope: Scope, raw_paths: re.Pattern[str] | None) -> bool:
    """True for an ``application/octet-stream`` body sent to an operation that takes one."""
    if raw_paths is None or not raw_paths.match(scope.get("path", "")):
        return False
    return declares(dict(scope["headers"]).get(b"content-type", b""), OCTET_STREAM)


class JsonBodies:
    """415 for a body that is not declared JSON, or a non-JSON ``Content-Type`` at all;
    ``raw_paths``: operations that take ``application/octet-stream`` instead (a type a web
    page cannot send across sites without a CORS preflight either)."""

    def __init__(self, app: ASGIApp, raw_paths: re.Pattern[str] | None = None) -> None:
        self.app, self.raw_paths = app, raw_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not raw_body(scope, self.raw_paths):
            headers = dict(scope["headers"])
            declared = headers.get(b"content-type")
            untyped_body = declared is None and _has_body(headers)
            if untyped_body or (declared is not None and not _declares_json(declared)):
                shown = (declared or b"none").decode("latin-1")[:100]
                raw = self.raw_paths is not None and self.raw_paths.match(scope.get("path", ""))
                wanted = OCTET_STREAM if raw else JSON
                error = UnsupportedMediaType(
                    f"this body must be sent as {wanted}, not {shown}", content_type=shown
                )
                await refuse(send, error)
                return
        await self.app(scope, receive, send)
