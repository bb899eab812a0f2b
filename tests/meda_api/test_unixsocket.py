"""The API's Unix socket file: born private, then 0660; stale ones replaced, others kept."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from meda_api.unixsocket import UnixListener
from meda_core.errors import Conflict


def test_a_socket_a_dead_server_left_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()
    listener = UnixListener(stale)
    assert stale.stat().st_mode & 0o777 == 0o660
    listener.close()
    assert not stale.exists()


def test_a_live_servers_socket_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    live = UnixListener(path)
    live.sock.listen()
    with pytest.raises(Conflict, match="already listens"):
        UnixListener(path)
    assert path.exists()
    live.close()
