"""``MEDA_HOME/server.json``: how to reach the ``meda serve`` of this home — its URL, token,
TLS certificate and Unix socket — and where its network lives (``MEDA_NETNS``); written by
the server (mode 0600), read by the CLI. When the server stops, only where the network
lives stays: the VMs and their network outlive the server."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from meda_core.errors import InvalidRequest

FILE_NAME = "server.json"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class ServerFile(BaseModel):
    """What a client needs to talk to the server."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: None once the server has stopped (the file then holds its setup only).
    url: str | None = None
    token: str | None = None
    #: The certificate (or CA) an HTTPS server's is checked with.
    ca_file: str | None = None
    unix_socket: str | None = None
    #: The network namespace meda's network and VMs live in (MEDA_NETNS), if any.
    netns: str | None = None
    netns_create: bool = False
    #: The serving process, and its meda version: who answers on ``url``.
    pid: int | None = None
    version: str | None = None

    def serves(self, url: str) -> bool:
        """Whether ``url`` reaches this server (any loopback name; with or without /api/v1)."""
        if url.startswith("unix://"):
            return self.unix_socket is not None and _socket_path(url) == self.unix_socket
        return self.url is not None and _endpoint(url) == _endpoint(self.url)

    def setup_only(self) -> ServerFile | None:
        """What stays once the server stops: where its network lives, nothing to reach it by."""
        if self.netns is None:
            return None
        return ServerFile(netns=self.netns, netns_create=self.netns_create)


def _socket_path(url: str) -> str:
    return "/" + url.removeprefix("unix://").lstrip("/")


def _endpoint(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme, "loopback" if host in _LOOPBACK else host, port


def path(home: Path) -> Path:
    return home / FILE_NAME


def write(home: Path, info: ServerFile) -> Path:
    """Replace the file at once, readable by its owner only (it holds the token)."""
    home.mkdir(parents=True, exist_ok=True)
    final = path(home)
    temporary = final.with_name(f".{FILE_NAME}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(info.model_dump_json(indent=2) + "\n")
    os.replace(temporary, final)
    return final


def remove(home: Path, info: ServerFile) -> None:
    """As a server stops, if the file still names that server (another may have started
    meanwhile), drop all that reaches it — a stopped server's token must not go to whoever
    takes its port — and keep only where its network lives (a later CLI acts on the same)."""
    try:
        if load(home) != info:
            return
    except InvalidRequest:
        return  # not ours to judge or remove
    setup = info.setup_only()
    if setup is None:
        path(home).unlink(missing_ok=True)
    else:
        write(home, setup)


def load(home: Path) -> ServerFile | None:
    """The file's contents, None without one; refused if others could have written it."""
    file = path(home)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidRequest(f"cannot read {file}: {exc.strerror}") from None
    with os.fdopen(fd) as f:
        status = os.fstat(f.fileno())
        if status.st_uid != os.geteuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise InvalidRequest(
                f"{file} is not this user's own, or others may write it: remove it, or "
                "let meda serve write it again",
                path=str(file),
            )
        text = f.read()
    try:
        return ServerFile.model_validate_json(text)
    except ValidationError:
        raise InvalidRequest(f"{file} is not a meda server file", path=str(file)) from None
