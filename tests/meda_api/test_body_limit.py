"""Bodies over the limit get 413 from a real server, chunked or not, slow or fast, and
even on a route that would start answering before it reads its body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meda_api.security import MAX_BODY
from meda_core.facade import Meda
from tests.conftest import ServeApi
from tests.meda_api.rawhttp import connect, read_answer, send_chunked, send_head

CHUNK = 64 * 1024


def _chunks(total: int) -> Iterator[bytes]:
    """A JSON document of ``total`` bytes: a VM whose user data is all padding."""
    head, tail = b'{"name": "big", "user_data": "#cloud-config\\n# ', b'"}'
    padding = total - len(head) - len(tail)
    yield head
    while padding > 0:
        yield b"x" * min(CHUNK, padding)
        padding -= CHUNK
    yield tail


def test_a_slow_chunked_body_over_the_limit_is_413_before_it_ends(
    serve_api: ServeApi, fake_meda: Meda, fake_image: str
) -> None:
    url = serve_api(fake_meda)
    answer = send_chunked(url, "POST", "/api/v1/vms", _chunks(2 * MAX_BODY), delay=0.005)
    assert answer.status == 413, answer.body
    assert b'"PAYLOAD_TOO_LARGE"' in answer.body
    assert answer.sent < 2 * MAX_BODY  # refused while it arrived, not at its end
    assert fake_meda.vms.list() == []


def test_a_chunked_body_within_the_limit_still_works(
    serve_api: ServeApi, fake_meda: Meda, fake_image: str
) -> None:
    answer = send_chunked(serve_api(fake_meda), "POST", "/api/v1/vms", _chunks(MAX_BODY // 4))
    assert answer.status == 201, answer.body
    assert [vm.name for vm in fake_meda.vms.list()] == ["big"]


def test_a_declared_body_over_the_limit_is_413_at_once(
    serve_api: ServeApi, fake_meda: Meda, fake_image: str
) -> None:
    with connect(serve_api(fake_meda), timeout=10) as sock:
        send_head(
            sock,
            "POST",
            "/api/v1/vms",
            "Content-Type: application/json",
            f"Content-Length: {MAX_BODY + 1}",
        )
        answer = read_answer(sock)  # not a byte of the body was sent
    assert answer.status == 413 and b'"PAYLOAD_TOO_LARGE"' in answer.body
    assert fake_meda.vms.list() == []


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/vms", "/api/v1/health"])
def test_a_body_over_the_limit_is_413_on_routes_that_do_not_read_one(
    serve_api: ServeApi, fake_meda: Meda, path: str
) -> None:
    """The event stream starts answering at once; other reads never look at a body."""
    answer = send_chunked(serve_api(fake_meda), "GET", path, _chunks(2 * MAX_BODY))
    assert answer.status == 413, (answer.status, answer.body[:200])
    assert b'"PAYLOAD_TOO_LARGE"' in answer.body
