"""HTTP/1.1 by hand over sockets, for tests that must behave as no polite client would:
bodies streamed slowly in chunks, and many requests left open at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int = 0  # body bytes the client had sent when the answer came


def connect(url: str, timeout: float = 30, source: str = "") -> socket.socket:
    """A connection to ``url``'s server, from the local address ``source`` if given (any
    of 127.0.0.0/8 makes another client of a loopback server)."""
    address = urlsplit(url)
    assert address.hostname and address.port
    return socket.create_connection(
        (address.hostname, address.port), timeout=timeout, source_address=(source, 0)
    )


def send_head(sock: socket.socket, method: str, path: str, *headers: str) -> None:
    host = "{}:{}".format(*sock.getpeername()[:2])  # what a client names a loopback server by
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers, "", ""]
    sock.sendall("\r\n".join(lines).encode())


def send_chunked(
    url: str, method: str, path: str, chunks: Iterable[bytes], delay: float = 0.0
) -> Answer:
    """Stream ``chunks`` with ``Transfer-Encoding: chunked``, ``delay`` seconds apart,
    until the server answers; its answer, and how much of the body went out before."""
    with connect(url) as sock:
        send_head(
            sock, method, path, "Content-Type: application/json", "Transfer-Encoding: chunked"
        )
        sent = 0
        for chunk in chunks:
            if answered(sock):
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            time.sleep(delay)
        else:
            sock.sendall(b"0\r\n\r\n")
        answer = read_answer(sock)
        answer.sent = sent
        return answer


def answered(sock: socket.socket, within: float = 0.0) -> bool:
    """Whether the server has begun to answer on ``sock`` (waiting up to ``within``)."""
    sock.settimeout(within or None)
    if not within:
        sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except (BlockingIOError, TimeoutError):
        return False
    finally:
        sock.settimeout(30)


def read_answer(sock: socket.socket) -> Answer:
    """The status, headers and (``Content-Length``) body of the next answer on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"the server closed without an answer: {data!r}")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return Answer(int(status_line.split()[1]), headers, body)
