"""Waits and event streams, opened by the hundred against a real server, hold no worker
thread and only as many places as the caps allow: the rest of the API still answers."""

from __future__ import annotations

import json
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from meda_api import create_app
from meda_core.facade import Meda
from meda_core.state.operations import Progress
from tests.conftest import ServeApi
from tests.meda_api.rawhttp import Answer, connect, read_answer, send_head

QUICK = 3.0  # seconds /health may take while the server is under siege


class Nothing(BaseModel):
    pass


@pytest.fixture
def endless(fake_meda: Meda) -> Iterator[tuple[str, threading.Event]]:
    """An operation that runs until the test lets it end: its id and its end."""
    end = threading.Event()

    def work(progress: Progress) -> Nothing:
        end.wait(120)
        return Nothing()

    yield fake_meda.operations.submit("pull", work).id, end
    end.set()


def _open(
    stack: ExitStack, url: str, path: str, count: int, source: str = ""
) -> list[socket.socket]:
    """``count`` requests for ``path`` sent from ``source`` and left open, as a hostile
    client leaves them; each with a made-up token, as if each were another client."""
    socks = []
    for _ in range(count):
        sock = stack.enter_context(connect(url, source=source))
        send_head(sock, "GET", path, f"Authorization: Bearer {secrets.token_hex(8)}")
        socks.append(sock)
    return socks


def _refused(socks: list[socket.socket]) -> list[Answer]:
    """The requests refused: their answers come at once (an event stream's 200 too), so
    once a second passes without one, the rest are held."""
    pending, answers = list(socks), []
    while ready := select.select(pending, [], [], 1.0)[0]:
        for sock in ready:
            answers.append(read_answer(sock))
            pending.remove(sock)
    return [answer for answer in answers if answer.status != 200]


def _answers_quickly(url: str) -> None:
    for path in ("/api/v1/health", "/api/v1/vms", "/api/v1/operations"):
        started = time.monotonic()
        response = httpx.get(url + path, timeout=QUICK)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < QUICK


def _caps(total: int, per_client: int) -> pytest.MarkDecorator:
    caps = {"max_waits": total, "max_waits_per_client": per_client}
    return pytest.mark.parametrize("meda_settings", [caps], indirect=True, ids=["caps"])


@_caps(500, 500)
def test_waits_and_streams_hold_no_worker_thread(
    serve_api: ServeApi, fake_meda: Meda, endless: tuple[str, threading.Event]
) -> None:
    """100 waits and 20 event streams (far more than the 40 worker threads) and the API
    answers as if they were not there; each wait answers when the operation ends."""
    op_id, end = endless
    url = serve_api(fake_meda)
    with ExitStack() as stack:
        waits = _open(stack, url, f"/api/v1/operations/{op_id}?wait=60", 100)
        streams = _open(stack, url, "/api/v1/events", 20)
        time.sleep(1)
        _answers_quickly(url)
        for stream in streams:
            assert read_answer(stream).status == 200  # streaming all along
        end.set()
        for wait in waits:
            answer = read_answer(wait)
            assert answer.status == 200 and json.loads(answer.body)["state"] == "succeeded"


@_caps(20, 8)
def test_waits_and_streams_beyond_the_caps_are_429(
    serve_api: ServeApi, fake_meda: Meda, endless: tuple[str, threading.Event]
) -> None:
    op_id, _ = endless
    url = serve_api(fake_meda)
    wait = f"/api/v1/operations/{op_id}?wait=60"
    with ExitStack() as stack:
        first = _open(stack, url, wait, 6, "127.0.0.2") + _open(
            stack, url, "/api/v1/events", 6, "127.0.0.2"
        )
        refused = _refused(first)
        assert len(refused) == 4  # 8 held for client a
        for answer in refused:
            assert answer.status == 429 and int(answer.headers["retry-after"]) >= 1
            assert json.loads(answer.body)["code"] == "RATE_LIMITED"
        assert len(_refused(_open(stack, url, wait, 12, "127.0.0.3"))) == 4  # 8 for b
        assert len(_refused(_open(stack, url, wait, 8, "127.0.0.4"))) == 4  # 20 in all
        _answers_quickly(url)
        for sock in first:  # client a goes away: its places are free again
            sock.close()
        deadline = time.monotonic() + 10
        while _refused(_open(stack, url, "/api/v1/events", 1, "127.0.0.5")):
            assert time.monotonic() < deadline, "the places of a client gone are still held"
            time.sleep(0.2)
        assert len(_refused(_open(stack, url, "/api/v1/events", 7, "127.0.0.5"))) == 0


@_caps(2, 2)
def test_a_wait_gives_its_place_back_when_the_operation_ends(
    serve_api: ServeApi, fake_meda: Meda, endless: tuple[str, threading.Event]
) -> None:
    op_id, end = endless
    url = serve_api(fake_meda)
    with httpx.Client(base_url=url, timeout=10) as client:
        quick = client.get(f"/api/v1/operations/{op_id}", params={"wait": 0.2})
        assert quick.status_code == 200 and quick.json()["state"] == "running"
        end.set()
        for _ in range(5):  # a finished operation: each wait ends, none stays held
            done = client.get(f"/api/v1/operations/{op_id}", params={"wait": 5})
            assert done.status_code == 200 and done.json()["state"] == "succeeded"
        missing = client.get("/api/v1/operations/nope", params={"wait": 5})
        assert missing.status_code == 404
    assert fake_meda.operations.list().count == 1


@pytest.mark.parametrize("seconds", ["301", "-1", "1e9", "nan"])
def test_a_wait_is_at_most_300_seconds(fake_meda: Meda, seconds: str) -> None:
    with TestClient(create_app(fake_meda), base_url="http://localhost") as client:
        refused = client.get("/api/v1/operations/any", params={"wait": seconds})
    assert refused.status_code == 400 and refused.json()["code"] == "INVALID_REQUEST"
