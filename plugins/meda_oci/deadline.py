"""One overall deadline per pull or push, which a slow or trickling registry cannot extend.

Per-read timeouts restart with every byte, so a registry sending one byte a minute never
trips them. Instead every socket a transfer opens is watched: when the deadline passes,
each is shut down, which wakes any read or write blocked on it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from types import TracebackType

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from meda_core.plugin import BackendError

CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 300.0


class Deadline:
    """Ends ``seconds`` from now; use as a context manager around the transfer."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._fired = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def remaining(self) -> float:
        return max(self._end - time.monotonic(), 0.0)

    def error(self) -> BackendError:
        return BackendError(
            f"the registry transfer did not finish within MEDA_OCI_DEADLINE ({self.seconds:g} s)",
            deadline=self.seconds,
        )

    def check(self) -> None:
        if self.expired:
            raise self.error()

    def timeouts(self) -> tuple[float, float]:
        """(connect, read) timeouts for one request: never past the deadline."""
        left = max(self.remaining(), 0.001)
        return min(CONNECT_TIMEOUT, left), min(READ_TIMEOUT, left)

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (now, if it has)."""
        with self._lock:
            if not self._fired:
                self._sockets.add(sock)
                if self._timer is None:
                    self._timer = threading.Timer(self.remaining(), self._fire)
                    self._timer.daemon = True
                    self._timer.start()
                return
        _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def session(self, connections: int = 1) -> requests.Session:
        """A requests session whose every connection this deadline watches, keeping up to
        ``connections`` open for reuse."""
        session = requests.Session()
        adapter = _watched_adapter(self, connections)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


def _watched_adapter(deadline: Deadline, connections: int) -> HTTPAdapter:
    class Plain(HTTPConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class Secure(HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class PlainPool(HTTPConnectionPool):
        ConnectionCls = Plain

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = Secure

    adapter = HTTPAdapter(max_retries=0, pool_maxsize=connections)
    adapter.poolmanager.pool_classes_by_scheme = {"http": PlainPool, "https": SecurePool}
    return adapter
