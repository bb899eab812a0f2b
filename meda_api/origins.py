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

    def from_another_site(self, headers: dict[bytes, bytes], path: str) -> bool:
        """A browser's request without ``Origin`` (an ``<img>``, a ``<script>``, a no-cors
        fetch) that it says another site made: refused, but for a person following a link
        to the docs pages."""
        site = headers.get(b"sec-fetch-site", b"").lower()
        if site not in (b"cross-site", b"same-site") or "*" in self.allowed:
            return False
        navigation = headers.get(b"sec-fetch-mode", b"").lower() == b"navigate"
        return not (navigation and not path.startswith("/api/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is None and self.from_another_site(headers, scope["path"]):
                error = Forbidden(
                    "requests a browser says another site made are refused "
                    "(Sec-Fetch-Site without Origin)",
                    sec_fetch_site=headers[b"sec-fetch-site"].decode("latin-1")[:20],
                )
                await refuse(send, error)
                return
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
