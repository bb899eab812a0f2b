"""``GET /vms/{name}/console``: the serial log as text, its tail, and a follow that streams
what the guest writes after the request began, held under the same caps as event streams."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from meda_core.facade import Meda
from meda_core.models import VM
from tests.conftest import ServeApi

TEXT = "text/plain; charset=utf-8"


@pytest.fixture
def booted(fake_meda: Meda, make_vm: Callable[..., VM]) -> VM:
    """A VM that ran once and is stopped: its console says it booted."""
    vm = make_vm("vm1")
    fake_meda.vms.start("vm1")
    fake_meda.vms.stop("vm1")
    return vm


def _append(vm: VM, data: bytes) -> None:
    with vm.console_log.open("ab") as log:
        log.write(data)


def test_an_unknown_vm_is_404(client: TestClient) -> None:
    answer = client.get("/api/v1/vms/nope/console")
    assert answer.status_code == 404
    assert answer.json()["code"] == "VM_NOT_FOUND"
    assert client.get("/api/v1/vms/nope/console?follow=true").status_code == 404


def test_a_stopped_vm_has_its_log_as_text(client: TestClient, booted: VM) -> None:
    answer = client.get("/api/v1/vms/vm1/console")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == TEXT
    assert answer.text == "fake VM vm1 booted\n"


def test_tail_gives_the_last_lines(client: TestClient, booted: VM) -> None:
    _append(booted, b"".join(b"line %d\n" % n for n in range(50)))
    assert client.get("/api/v1/vms/vm1/console?tail=2").text == "line 48\nline 49\n"
    assert client.get("/api/v1/vms/vm1/console?tail=0").text == ""
    for bad in ("-1", "10001", "many"):
        answer = client.get(f"/api/v1/vms/vm1/console?tail={bad}")
        assert answer.status_code == 400, bad


def test_the_guests_bytes_are_not_interpreted(client: TestClient, booted: VM) -> None:
    """Escape sequences reach the client as they are; bytes that are not UTF-8 become
    U+FFFD, so the text is what its content type says."""
    _append(booted, b"\x1b]0;owned\x07\x1b[2J\xff\xfeok\n")
    text = client.get("/api/v1/vms/vm1/console?tail=1").text
    assert text == "\x1b]0;owned\x07\x1b[2J\ufffd\ufffdok\n"


def test_the_operation_is_in_the_openapi_document(client: TestClient) -> None:
    operation = client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/vms/{name}/console"][
        "get"
    ]
    assert operation["operationId"] == "get_console"
    assert set(operation["responses"]["200"]["content"]) == {TEXT}
    assert {p["name"] for p in operation["parameters"]} == {"name", "tail", "follow"}


@contextlib.contextmanager
def _follow(url: str, path: str) -> Iterator[httpx.Response]:
    """A streamed GET of ``path``, closed (with its client) at the end."""
    with (
        httpx.Client(base_url=url, timeout=10) as client,
        client.stream("GET", path) as response,
    ):
        yield response


def test_follow_sees_a_line_written_after_the_request_began(
    fake_meda: Meda, booted: VM, serve_api: ServeApi
) -> None:
    url = serve_api(fake_meda)
    with _follow(url, "/api/v1/vms/vm1/console?follow=true&tail=1") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == TEXT
        chunks = response.iter_text()
        assert next(chunks) == "fake VM vm1 booted\n"  # what is there, at once
        threading.Timer(0.3, _append, (booted, b"written later\n")).start()
        assert next(chunks) == "written later\n"
        fake_meda.vms.delete("vm1")
        assert list(chunks) == []  # the stream ends with its VM


@pytest.mark.parametrize(
    "meda_settings", [{"max_waits": 4, "max_waits_per_client": 1}], indirect=True
)
def test_a_follow_is_held_under_the_caps_of_event_streams(
    fake_meda: Meda, booted: VM, serve_api: ServeApi
) -> None:
    url = serve_api(fake_meda)
    with _follow(url, "/api/v1/vms/vm1/console?follow=true") as held:
        assert held.status_code == 200
        refused = httpx.get(url + "/api/v1/vms/vm1/console?follow=true", timeout=10)
        assert refused.status_code == 429
        assert refused.json()["code"] == "RATE_LIMITED"
        # a read that ends at once is not held
        assert httpx.get(url + "/api/v1/vms/vm1/console", timeout=10).status_code == 200
    deadline = time.monotonic() + 5  # the place is given back once the server sees it go
    status = 429
    while status == 429 and time.monotonic() < deadline:
        with _follow(url, "/api/v1/vms/vm1/console?follow=true&tail=0") as again:
            status = again.status_code
        time.sleep(0.1)
    assert status == 200
