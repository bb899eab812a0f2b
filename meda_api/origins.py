"""Requests from web pages (an ``Origin`` header) only from this server's own origin or the
origins CORS allows: anything else is a cross-site request, refused with 403."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from meda_api.security import refuse
from meda_core.errors import Forbidden


def same_origin(origin: str, scope: Scope) -> bool:
    """Whether ``origin`` is the server's own: its scheme and the (checked) ``Host``."""
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
    return bool(host) and origin.lower() == f"{scope['scheme']}://{host}".lower()


class OriginGuard:
    """A request that says where it comes from must come from a trusted origin.

    Clients that are not browsers (curl, the CLI) send no ``Origin`` and pass. ``Origin:
    null`` (sandboxed frames, local files, some redirects) is never trusted.
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str] = ()) -> None:
        self.app, self.allowed = app, {o.lower() for o in allowed}

    def trusts(self, origin: str, scope: Scope) -> bool:
        if origin == "null":
            return False
        return same_origin(origin, scope) or origin.lower() in self.allowed or "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = dict(scope["headers"]).get(b"origin")
            if origin is not None and not self.trusts(origin.decode("latin-1"), scope):
                shown = origin.decode("latin-1")[:100]
                error = Forbidden(
                    f"requests from the web page origin {shown!r} are refused: only this "
                    "server's own pages and the origins in MEDA_CORS_ORIGINS may call it",
                    origin=shown,
                )
                await refuse(send, error)
                return
        await self.app(scope, receive, send)
