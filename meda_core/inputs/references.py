"""Image references: ``name[:tag]`` plus registry and org, or a full ``host/org/name:tag``."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass

from meda_core.errors import InvalidRequest
from meda_core.inputs.content import is_digest
from meda_core.inputs.names import parse_image_ref

DEFAULT_REGISTRY = "ghcr.io"
DEFAULT_ORG = "cirunlabs"
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_PORT = re.compile(r":[0-9]{1,5}$")
_PATH = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str  # org/name
    tag: str
    digest: str | None = None

    @property
    def name(self) -> str:
        return self.repository.rsplit("/", 1)[-1]

    @property
    def org(self) -> str | None:
        return self.repository.rsplit("/", 1)[0] if "/" in self.repository else None

    def __str__(self) -> str:
        at = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.registry}/{self.repository}{at}"

    @property
    def host(self) -> str:
        """The registry without its port."""
        return _PORT.sub("", self.registry)

    @property
    def insecure(self) -> bool:
        """Plain http for registries on loopback; https everywhere else.

        Loopback is ``localhost`` or a literal loopback address: a name such as
        ``127.example.com`` is resolved by DNS and may lead anywhere.
        """
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """``host`` is ``localhost`` or a literal loopback address (127.0.0.0/8, ::1) — never
    a name DNS resolves, which may lead anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_allowed(ref: Reference, allowed: Collection[str]) -> Reference:
    """``ref`` if its registry is one of ``allowed`` (or ``allowed`` is empty); else a 400."""
    if allowed and ref.registry.lower() not in allowed:
        raise InvalidRequest(
            f"registry '{ref.registry}' is not one this server may use (MEDA_ALLOWED_REGISTRIES)",
            registry=ref.registry,
            allowed=sorted(allowed),
        )
    return ref


def parse_reference(text: str, registry: str | None = None, org: str | None = None) -> Reference:
    """``ubuntu:latest`` (+ registry/org), or ``host:port/org/name:tag`` / ``…@sha256:…``."""
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not is_digest(digest):
            raise InvalidRequest(f"invalid digest '{digest}'", reference=text)
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = registry or DEFAULT_REGISTRY, text
        if "/" not in path:
            path = f"{org or DEFAULT_ORG}/{path}"
    path, _, tag = path.partition(":")
    tag = tag or "latest"
    if not _HOST.fullmatch(host) or not _PATH.fullmatch(path):
        raise InvalidRequest(f"invalid image reference '{text}'", reference=text)
    parse_image_ref(f"{path.rsplit('/', 1)[-1]}:{tag}")  # the local name must be valid too
    return Reference(host, path, tag, digest)
