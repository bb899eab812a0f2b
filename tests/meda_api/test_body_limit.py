"""Bodies over the limit get 413 from a real server, chunked or not, slow or fast, and
even on a route that would start answering before it reads its body."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from meda_api.security import MAX_BODY
from meda_core.app import Meda
from tests.conftest import ServeApi

CHUNK = 64 * 1024


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, sent: int) -> None:
        self.status, self.headers, self.body, self.sent = status, headers, body, sent


def _chunks(total: int) -> Iterator[bytes]:
    """A JSON document of ``total`` bytes: a VM whose user data is all padding."""
    head, tail = b'{"name": "big", "user_data": "#cloud-config\\n# ', b'"}'
    padding = total - len(head) - len(tail)
    yield head
    while padding > 0:
        yield b"x" * min(CHUNK, padding)
        padding -= CHUNK
    yield tail


def _send_chunked(url: str, method: str, path: str, chunks: Iterator[bytes],
                  delay: float = 0.0) -> Answer:  # fmt: skip
    """Stream ``chunks`` with ``Transfer-Encoding: chunked``, as a hostile client would,
    until the server answers; return its answer and how many bytes went out before."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent = 0
        for chunk in chunks:
            if _readable(sock):
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            time.sleep(delay)
        else:
            sock.sendall(b"0\r\n\r\n")
        return _read_answer(sock, sent)


def _readable(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def _read_answer(sock: socket.socket, sent: int) -> Answer:
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
    return Answer(int(status_line.split()[1]), headers, body, sent)


def test_a_slow_chunked_body_over_the_limit_is_413_before_it_ends(
    serve_api: ServeApi, fake_meda: Meda, fake_image: str
) -> None:
    url = serve_api(fake_meda)
    answer = _send_chunked(url, "POST", "/api/v1/vms", _chunks(2 * MAX_BODY), delay=0.005)
    assert answer.status == 413, answer.body
    assert b'"PAYLOAD_TOO_LARGE"' in answer.body
    assert answer.sent < 2 * MAX_BODY  # refused while it arrived, not at its end
    assert fake_meda.vms.list() == []


def test_a_declared_body_over_the_limit_is_413_at_once(
    serve_api: ServeApi, fake_meda: Meda, fake_image: str
) -> None:
    address = urlsplit(serve_api(fake_meda))
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(
            f"POST /api/v1/vms HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
        )
        answer = _read_answer(sock, 0)  # nothing of the body was sent
    assert answer.status == 413 and b'"PAYLOAD_TOO_LARGE"' in answer.body
    assert fake_meda.vms.list() == []


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/vms", "/api/v1/health"])
def test_a_body_over_the_limit_is_413_on_routes_that_do_not_read_one(
    serve_api: ServeApi, fake_meda: Meda, path: str
) -> None:
    """The event stream starts answering at once; other reads never look at a body."""
    url = serve_api(fake_meda)
    answer = _send_chunked(url, "GET", path, _chunks(2 * MAX_BODY))
    assert answer.status == 413, (answer.status, answer.body[:200])
    assert b'"PAYLOAD_TOO_LARGE"' in answer.body
