"""A forward's userspace proxy: relays a socket meda hands it to one guest address, no other.

meda binds the forward's host port in its own network namespace and starts this file
(standard library only, run by path) inside ``MEDA_NETNS`` with that socket (``--fd``). It
drops to an unprivileged user, says ``ready`` and then relays: TCP both ways with
``splice``, UDP per client address with an idle timeout. It reads nothing from what it
relays and connects to nothing but ``--target``; clients that come from meda's namespace
itself (a guest, masqueraded on its way out) are refused unless ``--allow-local``.
"""

from __future__ import annotations

import argparse
import contextlib
import encodings.idna  # noqa: F401  (sockets encode host names with it: load it while we may)
import fcntl
import os
import pwd
import resource
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CONNECT_TIMEOUT = 10.0
MAX_CONNECTIONS = 512
#: What one relayed connection holds open: its two sockets and a pipe each way.
FDS_PER_CONNECTION = 6
#: Descriptors kept for the rest (the listening socket, stdio, Python's own).
FDS_RESERVED = 32
#: Seconds to wait before accepting again when accept() fails (e.g. out of descriptors).
ACCEPT_BACKOFF = 0.1
UDP_IDLE = 60.0
MAX_UDP_CLIENTS = 512
#: A client address (one source IP) may hold at most this many UDP client ports...
MAX_UDP_PER_SOURCE = 64
#: ...and a full table gives way only to clients idle this long (else new ones wait).
UDP_EVICT_IDLE = 10.0
#: Bytes moved per splice, and the pipe's size (the most an unprivileged pipe may have).
CHUNK = 1 << 20
DATAGRAM = 65535

#: Whether to turn a client away, by its address (None: serve everyone).
Refuse = Callable[[str], bool] | None


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    listening = socket.socket(fileno=args.fd)
    limit = _raise_fd_limit()
    _drop_privileges(args.user)
    sys.stdout.write("ready\n")
    sys.stdout.close()
    refuse = None if args.allow_local else _is_local
    if listening.type == socket.SOCK_STREAM:
        serve_tcp(listening, target, refuse, connection_cap(limit))
    else:
        serve_udp(listening, target, refuse)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the bound socket meda passes")
    parser.add_argument("--target", required=True, help="guest IPv4:port")
    parser.add_argument("--user", default="nobody", help="the account to become")
    parser.add_argument("--allow-local", action="store_true", help="serve meda's namespace too")
    parser.add_argument("--forward", default="", help="the forward, for people reading ps")
    return parser


def _drop_privileges(user: str) -> None:
    """Become ``user`` for good; the kernel also makes the process undumpable, so that
    other processes of that user cannot ptrace it."""
    os.chdir("/")
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(fd_limit: int) -> int:
    """How many TCP connections fit in ``fd_limit`` descriptors (at most MAX_CONNECTIONS)."""
    return max(1, min(MAX_CONNECTIONS, (fd_limit - FDS_RESERVED) // FDS_PER_CONNECTION))


def _is_local(address: str) -> bool:
    """Whether ``address`` is one of this namespace's own (binding to it works). Loopback
    is never: a client on the listening namespace's loopback is of that namespace."""
    if address.startswith("127."):
        return False
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return True  # cannot tell (out of descriptors): turn the client away
    with probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


# ---- TCP ----


class _Slots:
    """Connections in use, in all and by source address (a quarter of all, each)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.per_source = cap, max(1, cap // 4)
        self.total = 0
        self.by_source: dict[str, int] = {}
        self.lock = threading.Lock()

    def take(self, source: str) -> bool:
        with self.lock:
            held = self.by_source.get(source, 0)
            if self.total >= self.cap or held >= self.per_source:
                return False
            self.total += 1
            self.by_source[source] = held + 1
            return True

    def give(self, source: str) -> None:
        with self.lock:
            self.total -= 1
            self.by_source[source] -= 1
            if not self.by_source[source]:
                del self.by_source[source]


def serve_tcp(
    listening: socket.socket, target: tuple[str, int], refuse: Refuse, cap: int = MAX_CONNECTIONS
) -> None:
    slots = _Slots(cap)
    while True:
        try:
            client, peer = listening.accept()
        except OSError:  # out of descriptors or memory: the backlog waits, the proxy lives
            time.sleep(ACCEPT_BACKOFF)
            continue
        source = peer[0]
        if (refuse is not None and refuse(source)) or not slots.take(source):
            client.close()
            continue
        worker = threading.Thread(
            target=_connection, args=(client, target, slots, source), daemon=True
        )
        try:
            worker.start()
        except RuntimeError:  # no thread to be had: turn this one away
            client.close()
            slots.give(source)


def _connection(client: socket.socket, target: tuple[str, int], slots: _Slots, source: str) -> None:
    try:
        with client, socket.create_connection(target, CONNECT_TIMEOUT) as upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()
    except (OSError, RuntimeError):
        pass  # the guest did not answer (or no thread): the client sees its connection closed
    finally:
        slots.give(source)


def _pump(source: socket.socket, dest: socket.socket) -> None:
    """Copy ``source`` to ``dest`` through a pipe (no copy in userspace) until it ends,
    then end ``dest``'s sending side; on an error, end both ways of both sockets."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        _abort(source, dest)
        return
    with contextlib.suppress(OSError):  # a bigger pipe: fewer system calls per MiB
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, CHUNK)
    try:
        while moved := os.splice(source.fileno(), write_end, CHUNK, flags=os.SPLICE_F_MOVE):
            while moved:
                moved -= os.splice(read_end, dest.fileno(), moved, flags=os.SPLICE_F_MOVE)
        dest.shutdown(socket.SHUT_WR)
    except OSError:
        _abort(source, dest)
    finally:
        os.close(read_end)
        os.close(write_end)


def _abort(*socks: socket.socket) -> None:
    """End both ways of ``socks`` (their owners then close them)."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# ---- UDP ----


@dataclass
class _Client:
    address: tuple[str, int]
    upstream: socket.socket
    seen: float = field(default_factory=time.monotonic)


def serve_udp(listening: socket.socket, target: tuple[str, int], refuse: Refuse) -> None:
    """One connected socket per client: the kernel then hands it only the target's replies."""
    selector = selectors.DefaultSelector()
    selector.register(listening, selectors.EVENT_READ)
    clients: dict[tuple[str, int], _Client] = {}
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj is listening:
                _from_client(listening, target, refuse, clients, selector)
            else:
                _from_target(listening, key.data)
        _expire(clients, selector, time.monotonic() - UDP_IDLE)


def _from_client(
    listening: socket.socket,
    target: tuple[str, int],
    refuse: Refuse,
    clients: dict[tuple[str, int], _Client],
    selector: selectors.BaseSelector,
) -> None:
    try:
        data, address = listening.recvfrom(DATAGRAM)
    except OSError:
        return
    client = clients.get(address)
    if client is None:
        if (refuse is not None and refuse(address[0])) or not _room(clients, selector, address):
            return
        try:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError:  # out of descriptors: this datagram is lost, the proxy lives
            return
        with contextlib.suppress(OSError):
            upstream.connect(target)
        client = clients[address] = _Client(address, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
    client.seen = time.monotonic()
    with contextlib.suppress(OSError):  # e.g. refused: the guest's port is closed
        client.upstream.send(data)


def _room(
    clients: dict[tuple[str, int], _Client],
    selector: selectors.BaseSelector,
    address: tuple[str, int],
) -> bool:
    """Whether a new client at ``address`` gets a place: its source IP has fewer than
    MAX_UDP_PER_SOURCE, and the table has room or a client idle for UDP_EVICT_IDLE gives way."""
    if sum(1 for known in clients if known[0] == address[0]) >= MAX_UDP_PER_SOURCE:
        return False
    if len(clients) < MAX_UDP_CLIENTS:
        return True
    oldest = min(clients.values(), key=lambda c: c.seen)
    if oldest.seen > time.monotonic() - UDP_EVICT_IDLE:
        return False
    _close(clients, selector, oldest)
    return True


def _from_target(listening: socket.socket, client: _Client) -> None:
    try:
        data = client.upstream.recv(DATAGRAM)
    except OSError:
        return
    client.seen = time.monotonic()
    with contextlib.suppress(OSError):
        listening.sendto(data, client.address)


def _expire(
    clients: dict[tuple[str, int], _Client], selector: selectors.BaseSelector, before: float
) -> None:
    for client in [c for c in clients.values() if c.seen < before]:
        _close(clients, selector, client)


def _close(
    clients: dict[tuple[str, int], _Client], selector: selectors.BaseSelector, client: _Client
) -> None:
    selector.unregister(client.upstream)
    client.upstream.close()
    del clients[client.address]


if __name__ == "__main__":
    main()
