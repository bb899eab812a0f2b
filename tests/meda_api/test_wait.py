"""``GET /vms/{name}/wait``: answers when what it waits for holds (200, the VM) or at the
timeout (408), at once for a VM that is not there or goes; held on the event loop, capped."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from meda_core.facade import Meda
from meda_core.testing.fakes import FakeHypervisor
from meda_core.vms import readiness
from tests.conftest import ServeApi
from tests.meda_api.rawhttp import connect, read_answer, send_head

WAIT = "/api/v1/vms/vm1/wait"


def _later(seconds: float, action: Callable[[], Any]) -> threading.Thread:
    """``action`` in a thread, ``seconds`` from now (the change a wait waits for)."""
    thread = threading.Timer(seconds, action)
    thread.start()
    return thread


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port on loopback that accepts connections (a guest's service)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


@pytest.fixture
def guest_at_loopback(fake_meda: Meda, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each guest port is reached on loopback, at the same port: tests send nothing beyond."""
    monkeypatch.setattr(fake_meda.network, "guest_endpoint", lambda name, port: ("127.0.0.1", port))


def test_a_condition_that_holds_answers_at_once_with_the_vm(
    client: TestClient, make_vm: Callable[..., Any]
) -> None:
    make_vm("vm1")
    started = time.monotonic()
    answer = client.get(WAIT, params={"for": "stopped"})
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 2
    assert answer.json() == client.get("/api/v1/vms/vm1").json()


def test_it_answers_when_the_vm_starts(
    client: TestClient, fake_meda: Meda, make_vm: Callable[..., Any]
) -> None:
    make_vm("vm1")
    starting = _later(1.0, lambda: fake_meda.vms.start("vm1"))
    started = time.monotonic()
    answer = client.get(WAIT, params={"for": ["running", "ip", "agent"], "timeout": 30})
    starting.join()
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "running" and answer.json()["ip"]
    assert 0.9 < time.monotonic() - started < 5


def test_it_answers_when_the_vm_stops(client: TestClient, fake_meda: Meda, running_vm: str) -> None:
    stopping = _later(0.5, lambda: fake_meda.vms.stop(running_vm, timeout=0))
    answer = client.get(WAIT, params={"for": "stopped", "timeout": 30})
    stopping.join()
    assert answer.status_code == 200 and answer.json()["state"] == "stopped"


def test_the_timeout_is_408_with_what_is_pending(
    client: TestClient, make_vm: Callable[..., Any]
) -> None:
    make_vm("vm1")
    started = time.monotonic()
    answer = client.get(WAIT, params={"for": ["running", "ip"], "timeout": 1})
    assert 1 <= time.monotonic() - started < 3
    assert answer.status_code == 408
    body = answer.json()
    assert body["code"] == "TIMEOUT" and "after 1s" in body["error"]
    details = body["details"]
    assert details["pending"] == ["running", "ip"] and details["conditions"] == ["running", "ip"]
    assert details["state"] == "stopped" and details["timeout"] == 1
    assert details["message"] == body["error"]


def test_timeout_0_looks_once(client: TestClient, make_vm: Callable[..., Any]) -> None:
    make_vm("vm1")
    assert client.get(WAIT, params={"for": "stopped", "timeout": 0}).status_code == 200
    started = time.monotonic()
    assert client.get(WAIT, params={"for": "running", "timeout": 0}).status_code == 408
    assert time.monotonic() - started < 1


def test_a_stopped_vm_is_waited_for_ip_until_it_starts(
    client: TestClient, fake_meda: Meda, make_vm: Callable[..., Any]
) -> None:
    """A stopped VM's reserved address does not count: it may start, and then it does."""
    make_vm("vm1")
    assert fake_meda.vms.get("vm1").ip is not None
    assert client.get(WAIT, params={"for": "ip", "timeout": 0.5}).status_code == 408
    starting = _later(0.5, lambda: fake_meda.vms.start("vm1"))
    answer = client.get(WAIT, params={"for": "ip", "timeout": 30})
    starting.join()
    assert answer.status_code == 200 and answer.json()["state"] == "running"


def test_a_port_counts_once_it_accepts_a_connection(
    client: TestClient, running_vm: str, guest_at_loopback: None
) -> None:
    with socket.socket() as free:  # a port nobody listens on: refused
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    refused = client.get(WAIT, params={"for": f"port:{closed}", "timeout": 0.5})
    assert refused.status_code == 408
    assert refused.json()["details"]["pending"] == [f"port:{closed}"]
    assert "refused" in refused.json()["error"].lower()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        answer = client.get(WAIT, params={"for": ["ip", f"port:{port}"], "timeout": 10})
    assert answer.status_code == 200 and answer.json()["name"] == running_vm


def _serve(listener: socket.socket, says: list[bytes]) -> threading.Thread:
    """Accept connections on ``listener`` until it closes, each told ``says[0]``."""

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(says[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_port_22_counts_once_ssh_says_its_banner(
    client: TestClient,
    fake_meda: Meda,
    running_vm: str,
    listener: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = listener.getsockname()[1]
    monkeypatch.setattr(fake_meda.network, "guest_endpoint", lambda name, p: ("127.0.0.1", port))
    monkeypatch.setattr(readiness, "GREETING_WAIT", 0.3)
    says = [b""]
    _serve(listener, says)
    silent = client.get(WAIT, params={"for": "port:22", "timeout": 0.5})
    assert silent.status_code == 408 and "SSH-" in silent.json()["error"]
    says[0] = b"HTTP/1.0 400 Bad Request\r\n"
    other = client.get(WAIT, params={"for": "port:22", "timeout": 0.5})
    assert other.status_code == 408 and "not with SSH-" in other.json()["error"]
    says[0] = b"SSH-2.0-test\r\n"
    answer = client.get(WAIT, params={"for": "port:22", "timeout": 10})
    assert answer.status_code == 200, answer.text


def test_for_repeats_and_all_must_hold(
    client: TestClient, fake_meda: Meda, make_vm: Callable[..., Any], guest_at_loopback: None
) -> None:
    make_vm("vm1")
    both = client.get(WAIT, params={"for": ["stopped", "stopped"], "timeout": 0})
    assert both.status_code == 200
    fake_meda.vms.start("vm1")
    partly = client.get(WAIT, params={"for": ["running", "port:1"], "timeout": 0})
    assert partly.status_code == 408 and partly.json()["details"]["pending"] == ["port:1"]


def test_a_missing_vm_is_404_at_once(client: TestClient, fake_image: str) -> None:
    started = time.monotonic()
    answer = client.get("/api/v1/vms/nope/wait", params={"for": "running", "timeout": 60})
    assert answer.status_code == 404 and answer.json()["code"] == "VM_NOT_FOUND"
    assert time.monotonic() - started < 2


def test_a_vm_deleted_while_waited_for_is_404_at_once(
    client: TestClient, fake_meda: Meda, make_vm: Callable[..., Any]
) -> None:
    make_vm("vm1")
    deleting = _later(1.0, lambda: fake_meda.vms.delete("vm1"))
    started = time.monotonic()
    answer = client.get(WAIT, params={"for": "running", "timeout": 60})
    deleting.join()
    assert answer.status_code == 404 and answer.json()["code"] == "VM_NOT_FOUND"
    assert "deleted while" in answer.json()["error"]
    assert time.monotonic() - started < 5


def test_a_vm_replaced_by_another_of_its_name_is_404(
    client: TestClient, fake_meda: Meda, make_vm: Callable[..., Any]
) -> None:
    """A wait is for the VM that was there when it began, not a new one of the same name."""
    make_vm("vm1")

    def replace() -> None:
        fake_meda.vms.delete("vm1")
        make_vm("vm1")
        fake_meda.vms.start("vm1")

    replacing = _later(0.5, replace)
    answer = client.get(WAIT, params={"for": "running", "timeout": 30})
    replacing.join()
    assert answer.status_code == 404


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (["bogus"], "cannot wait for 'bogus'"),
        (["Running"], "cannot wait for"),
        (["port"], "cannot wait for"),
        (["port:0"], "1 to 65535"),
        (["port:65536"], "1 to 65535"),
        (["port:-1"], "1 to 65535"),
        (["port:22x"], "1 to 65535"),
        (["port: 22"], "1 to 65535"),
        ([""], "cannot wait for"),
        (["running,ip"], "cannot wait for"),
        (["stopped", "ip"], "never holds with ip"),
        (["ip"] * 17, "at most 16"),
    ],
)
def test_bad_conditions_are_400_and_change_nothing(
    client: TestClient, make_vm: Callable[..., Any], values: list[str], problem: str
) -> None:
    make_vm("vm1")
    before = client.get("/api/v1/vms/vm1").json()
    answer = client.get(WAIT, params={"for": values})
    assert answer.status_code == 400 and answer.json()["code"] == "INVALID_REQUEST"
    assert problem in answer.json()["error"]
    assert client.get("/api/v1/vms/vm1").json() == before


@pytest.mark.parametrize(
    "query",
    ["", "?timeout=5", "?for=running&timeout=-1", "?for=running&timeout=3601",
     "?for=running&timeout=nan", "?for=running&timeout=soon"],
)  # fmt: skip
def test_a_missing_for_or_bad_timeout_is_400(
    client: TestClient, make_vm: Callable[..., Any], query: str
) -> None:
    make_vm("vm1")
    answer = client.get(WAIT + query)
    assert answer.status_code == 400 and answer.json()["code"] == "INVALID_REQUEST"


def test_a_bad_name_is_400(client: TestClient) -> None:
    answer = client.get("/api/v1/vms/..%2Fetc/wait", params={"for": "running"})
    assert answer.status_code in (400, 404)
    assert answer.json()["code"] in ("INVALID_REQUEST", "NOT_FOUND")


def test_agent_where_guests_have_no_channel_is_422_at_once(
    client: TestClient, make_vm: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeHypervisor, "agent", False)
    make_vm("vm1")
    client.post("/api/v1/vms/vm1/start").raise_for_status()
    started = time.monotonic()
    answer = client.get(WAIT, params={"for": "agent", "timeout": 60})
    assert answer.status_code == 422 and answer.json()["code"] == "NO_AGENT"
    assert time.monotonic() - started < 5


def _caps(total: int, per_client: int) -> pytest.MarkDecorator:
    caps = {"max_waits": total, "max_waits_per_client": per_client}
    return pytest.mark.parametrize("meda_settings", [caps], indirect=True, ids=["caps"])


def _open_waits(stack: ExitStack, url: str, count: int, query: str) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = stack.enter_context(connect(url))
        send_head(sock, "GET", f"{WAIT}?{query}")
        socks.append(sock)
    return socks


@_caps(500, 500)
def test_a_hundred_waits_hold_no_worker_thread(
    serve_api: ServeApi, fake_meda: Meda, make_vm: Callable[..., Any]
) -> None:
    """More waits than worker threads (40), and the API answers as if they were not there;
    each answers once the VM runs."""
    make_vm("vm1")
    url = serve_api(fake_meda)
    with ExitStack() as stack:
        waits = _open_waits(stack, url, 100, "for=running&for=ip&timeout=120")
        time.sleep(1)
        for path in ("/api/v1/health", "/api/v1/vms", "/api/v1/vms/vm1"):
            started = time.monotonic()
            assert httpx.get(url + path, timeout=3).status_code == 200
            assert time.monotonic() - started < 3
        started = time.monotonic()
        httpx.post(url + "/api/v1/vms/vm1/start", timeout=30).raise_for_status()
        for wait in waits:
            answer = read_answer(wait)
            assert answer.status == 200 and json.loads(answer.body)["state"] == "running"
        assert time.monotonic() - started < 10


@_caps(3, 2)
def test_waits_beyond_the_caps_are_429_and_a_client_gone_frees_its_place(
    serve_api: ServeApi, fake_meda: Meda, make_vm: Callable[..., Any]
) -> None:
    make_vm("vm1")
    url = serve_api(fake_meda)
    query: dict[str, str | float] = {"for": "running", "timeout": 60}
    with ExitStack() as stack:
        held = _open_waits(stack, url, 2, "for=running&timeout=60")
        time.sleep(0.5)
        refused = httpx.get(url + WAIT, params=query, timeout=10)
        assert refused.status_code == 429 and refused.json()["code"] == "RATE_LIMITED"
        assert int(refused.headers["retry-after"]) >= 1
        for sock in held:  # the client goes away: its places are free again
            sock.close()
        deadline = time.monotonic() + 10
        while True:
            answer = httpx.get(url + WAIT, params={"for": "running", "timeout": 0}, timeout=10)
            if answer.status_code == 408:
                break
            assert answer.status_code == 429
            assert time.monotonic() < deadline, "the places of a client gone are still held"
            time.sleep(0.2)
    # Nothing is left listening for the VM's events either.
    deadline = time.monotonic() + 10
    while fake_meda.events._callbacks:
        assert time.monotonic() < deadline, "a wait whose client went still listens"
        time.sleep(0.1)
