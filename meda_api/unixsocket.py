"""The API's Unix socket: mode 0660, owned by a chosen group, so its members may use the API
and nobody else can connect (as with Docker's socket); removed when the server stops."""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import uvicorn

from meda_core.errors import Conflict, InvalidRequest

MODE = 0o660


def _group_id(group: str | None) -> int:
    if group is None:
        return os.getegid()
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise InvalidRequest(f"no group named {group!r} on this host", group=group) from None


def _clear_stale(path: Path) -> None:
    """Remove a socket a dead server left; never another file, nor a live server's socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise Conflict(f"{path} exists and is not a socket: choose another path", path=str(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        path.unlink(missing_ok=True)
    else:
        raise Conflict(f"a server already listens on {path}", path=str(path))
    finally:
        probe.close()


class UnixListener:
    """A bound Unix socket at ``path``, 0660 and ``root:group`` (this process's group)."""

    def __init__(self, path: Path, group: str | None = None) -> None:
        gid = _group_id(group)
        if not path.parent.is_dir():
            raise InvalidRequest(f"no directory {path.parent} for the socket", path=str(path))
        _clear_stale(path)
        self.path, self.sock = path, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o177)  # born 0600: nobody else connects before the chown
        try:
            self.sock.bind(str(path))
            os.chown(path, -1, gid)
            os.chmod(path, MODE)
            self.inode = path.stat().st_ino
        except OSError:
            self.sock.close()
            raise
        finally:
            os.umask(previous)

    def close(self) -> None:
        """Close the socket and delete its file, if that is still this socket's."""
        self.sock.close()
        try:
            if self.path.stat().st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass


class SocketServer(uvicorn.Server):
    """uvicorn's server, which also removes the Unix socket's file and runs ``on_stop`` as
    it shuts down (it re-raises SIGTERM once done, so nothing after ``run`` gets to)."""

    def __init__(
        self,
        config: uvicorn.Config,
        listener: UnixListener | None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.listener, self.on_stop = listener, on_stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self.listener is not None:
                self.listener.close()
            if self.on_stop is not None:
                self.on_stop()
