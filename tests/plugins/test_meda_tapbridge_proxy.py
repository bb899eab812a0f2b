"""A forward's proxy under load from hostile clients: it stays up and shares itself out."""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from meda_tapbridge import proxies, proxy


class Guest:
    """A guest service on loopback that answers ``ping`` with ``pong`` and holds every
    connection open (as an HTTP server with keep-alive does)."""

    def __init__(self, protocol: str) -> None:
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        serve = self._tcp if protocol == "tcp" else self._udp
        threading.Thread(target=serve, daemon=True).start()

    def _tcp(self) -> None:
        self.sock.listen(4096)
        while True:
            conn, _ = self.sock.accept()
            self.held.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(100):
                conn.sendall(b"pong:" + data)

    def _udp(self) -> None:
        while True:
            data, peer = self.sock.recvfrom(2048)
            if data.startswith(b"slow"):  # a slow service: the answer comes 2 s later
                threading.Timer(2, self.sock.sendto, (b"pong:" + data, peer)).start()


Start = Callable[[str, int], tuple[subprocess.Popen[bytes], int, Guest]]


@pytest.fixture
def start_proxy() -> Iterator[Start]:
    """Start proxy.py as meda does (a bound socket, as nobody) for a new guest service,
    with its open-file limit at ``nofile`` (soft and hard); its port and the guest."""
    started: list[subprocess.Popen[bytes]] = []

    def start(protocol: str, nofile: int) -> tuple[subprocess.Popen[bytes], int, Guest]:
        guest = Guest(protocol)
        spec = proxies.ProxySpec(
            protocol=protocol,
            host_port=0,
            address="127.0.0.1",
            target=f"127.0.0.1:{guest.port}",
            allow_local=True,
        )
        with proxies._bound(spec) as sock:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    str(proxies.PROXY),
                    "--fd",
                    str(sock.fileno()),
                    "--target",
                    spec.target,
                    "--user",
                    proxies.USER,
                    "--allow-local",
                ],
                stdout=subprocess.PIPE,
                pass_fds=(sock.fileno(),),
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
            )
            port = sock.getsockname()[1]
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        return process, port, guest

    yield start
    for process in started:
        process.kill()
        process.wait()


def ping(port: int, source: str = "127.0.0.1", timeout: float = 5) -> bytes:
    with contextlib.suppress(OSError):
        conn = socket.create_connection(("127.0.0.1", port), timeout, (source, 0))
        with conn:
            conn.sendall(b"ping")
            return conn.recv(100)
    return b""


def hold(port: int, count: int, source: str) -> list[socket.socket]:
    """Open ``count`` connections from ``source`` and keep them."""
    held = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            held.append(socket.create_connection(("127.0.0.1", port), 2, (source, 0)))
    return held


def test_connections_past_the_open_file_limit_do_not_end_the_proxy(start_proxy: Start) -> None:
    """400 held connections need ~2400 descriptors; at a limit of 1024 the proxy serves as
    many as fit, turns the rest away and serves again once they close."""
    process, port, guest = start_proxy("tcp", 1024)
    clients = [*hold(port, 200, "127.0.0.2"), *hold(port, 200, "127.0.0.3")]
    time.sleep(1)
    assert process.poll() is None
    assert len(guest.held) <= 1024 // 6  # each connection holds 6 descriptors
    for conn in clients:
        conn.close()
    time.sleep(1)
    assert ping(port) == b"pong:ping"
    assert process.poll() is None


def test_one_source_address_cannot_take_every_connection(start_proxy: Start) -> None:
    _, port, guest = start_proxy("tcp", 4096)
    clients = hold(port, proxy.MAX_CONNECTIONS + 10, "127.0.0.2")
    time.sleep(1)
    assert len(guest.held) == proxy.MAX_CONNECTIONS // 4  # the rest were closed at once
    assert ping(port, "127.0.0.3") == b"pong:ping"
    for conn in clients:
        conn.close()


def test_the_open_file_limit_is_raised_and_caps_connections() -> None:
    assert proxy.connection_cap(1024) == (1024 - proxy.FDS_RESERVED) // proxy.FDS_PER_CONNECTION
    assert proxy.connection_cap(1 << 20) == proxy.MAX_CONNECTIONS
    assert proxy.connection_cap(10) == 1


def test_many_udp_source_ports_do_not_evict_a_client(start_proxy: Start) -> None:
    """One source IP sending from 520 ports gets MAX_UDP_PER_SOURCE of them served; a
    client of another address still gets its (slow) answer."""
    _, port, _ = start_proxy("udp", 4096)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as legit:
        legit.bind(("127.0.0.1", 0))
        legit.settimeout(5)
        legit.sendto(b"slow", ("127.0.0.1", port))
        flood = []
        for _ in range(520):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.2", 0))
            sock.sendto(b"x", ("127.0.0.1", port))
            flood.append(sock)
            time.sleep(0.001)  # not faster than the proxy reads: none is dropped
        try:
            assert legit.recv(100) == b"pong:slow"
        finally:
            for sock in flood:
                sock.close()
