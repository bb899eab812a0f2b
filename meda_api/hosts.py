"""The ``Host`` header must name this server: the guard against DNS rebinding (421)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from meda_api.security import refuse
from meda_core.errors import MisdirectedRequest

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::[0-9]{1,5})?")


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header, lowercased, without its port (None if malformed)."""
    match = _HOST.fullmatch(value.strip().lower())
    return match.group(1) if match else None


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def normalize(name: str) -> str:
    """A configured name as a ``Host`` header carries it: lowercase, IPv6 in brackets."""
    name = name.strip().lower()
    address = _address(name)
    if address is not None and address.version == 6:
        return f"[{address}]"
    return host_name(name) or name


@dataclass(frozen=True)
class HostPolicy:
    """The names a server answers to; ``any_address``: any IP literal (a wildcard bind)."""

    names: frozenset[str] = LOOPBACK_NAMES
    any_address: bool = False

    @classmethod
    def serving(cls, bind: str, extra: Iterable[str] = ()) -> HostPolicy:
        """Loopback, the bind address and the operator's names. Bound to every address, any
        IP literal too: a page cannot make a browser send its own site's IP to this host,
        so only names can rebind."""
        names = {normalize(n) for n in extra if n.strip()}
        wildcard = bind.strip().lower() in WILDCARDS
        if not wildcard:
            names.add(normalize(bind))
        return cls(LOOPBACK_NAMES | names, any_address=wildcard)

    def allows(self, name: str) -> bool:
        if name in self.names:
            return True
        address = _address(name)
        return address is not None and (address.is_loopback or self.any_address)


class HostGuard:
    """Refuse, with 421, any request whose ``Host`` names a site this server is not."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host_name(given)
            if name is None or not self.policy.allows(name):
                error = MisdirectedRequest(
                    f"this server does not answer to the host {given[:100]!r}; name it by "
                    "localhost, 127.0.0.1 or a name given with --allowed-host",
                    host=given[:100],
                )
                await refuse(send, error)
                return
        await self.app(scope, receive, send)
