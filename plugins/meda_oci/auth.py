"""Registry credentials: which registry each belongs to, and where a token may come from.

Environment credentials (``MEDA_REGISTRY_USERNAME``/``PASSWORD``/``TOKEN``) belong to the
one registry ``MEDA_REGISTRY_HOST`` names; docker's config is per registry already. The
client sends them to their registry's own scheme, host and port only, and asks for a
token only at a realm on the registry's host or on a host ``MEDA_REGISTRY_TOKEN_REALMS``
allows.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import oras.auth.basic
import oras.container
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from meda_core.plugin import BackendError, Reference, is_loopback
from meda_oci.settings import Credentials

_PARAM = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NO_ORIGIN = ("", "", 0)
_AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Login:
    """What a client may present to its registry: Basic credentials or a fixed token."""

    basic: str | None = None  # base64 of user:password
    bearer: str | None = None
    #: environment credentials were set, but for another registry (for the error message)
    elsewhere: bool = False


def login_for(ref: Reference, credentials: Credentials) -> Login:
    """The environment's credentials if they name ``ref``'s registry, else docker's."""
    if credentials.given and credentials.for_registry(ref.registry):
        if credentials.token is not None:
            return Login(bearer=credentials.token.get_secret_value())
        assert credentials.username is not None and credentials.password is not None
        pair = f"{credentials.username}:{credentials.password.get_secret_value()}"
        return Login(basic=base64.b64encode(pair.encode()).decode())
    config = docker_config()
    helper = oras.auth.basic.BasicAuth()
    helper._logout()  # its constructor takes ORAS_USER/ORAS_PASS, for every registry alike
    container = oras.container.Container(f"{ref.registry}/{ref.repository}", registry=ref.registry)
    helper.load_configs(container, [str(config)] if config.exists() else [])
    basic = getattr(helper, "_basic_auth", None)
    return Login(basic=basic if isinstance(basic, str) else None, elsewhere=credentials.given)


def docker_config() -> Path:
    """docker's config file: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``, the port filled in from the scheme.

    A URL that HTTP libraries may read in more than one way — a backslash, whitespace,
    control characters, user info, or a host that urllib3 (what requests connects with)
    reads otherwise — has no origin, ``("", "", 0)``: it matches nothing and is followed
    nowhere.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
        connects_to = parse_url(url).host
    except (ValueError, LocationParseError):
        return _NO_ORIGIN
    host = (parts.hostname or "").lower()
    read_otherwise = (connects_to or "").strip("[]").lower() != host
    if _AMBIGUOUS.search(url) or "@" in parts.netloc or read_otherwise:
        return _NO_ORIGIN
    return parts.scheme, host, port or _DEFAULT_PORTS.get(parts.scheme, 0)


def challenge(header: str) -> tuple[str, dict[str, str]]:
    """A ``Www-Authenticate`` header's scheme (lower case) and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _PARAM.findall(rest)}


def checked_realm(realm: str | None, ref: Reference, credentials: Credentials) -> str:
    """``realm`` if meda may ask it for a token for ``ref``'s registry; else a refusal."""
    scheme, host, _ = origin(realm or "")
    own = host == ref.host.lower()
    if not own and host not in credentials.realm_hosts():
        raise BackendError(
            f"registry {ref.registry} asks for its tokens at {host or realm!r}, which is not "
            "its own host; meda sends nothing there unless MEDA_REGISTRY_TOKEN_REALMS "
            "lists it",
            registry=ref.registry,
            realm_host=host,
        )
    plain_ok = ref.insecure and is_loopback(host)
    if scheme != "https" and not (scheme == "http" and plain_ok):
        raise BackendError(
            f"registry {ref.registry} asks for its tokens over {scheme or 'no scheme'} at "
            f"{host}; meda asks for tokens over https only (plain http on loopback)",
            registry=ref.registry,
        )
    assert realm is not None
    return realm
