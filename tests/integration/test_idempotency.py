"""``Idempotency-Key`` against a real ``meda serve``: a client that times out and sends its
request again gets one VM, through a server that waits, or dies and comes back."""

from __future__ import annotations

import contextlib
import signal
import time

import httpx
import pytest

from meda_core.testing.host import processes_mentioning
from tests.integration.conftest import StartServer

pytestmark = pytest.mark.vm

CUT = {"name": "cut", "memory": "256M"}


def _post(url: str, path: str, body: object, key: str, timeout: float) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"Idempotency-Key": key}, timeout=timeout)


def test_a_run_sent_again_after_a_timeout_boots_one_guest(start_server: StartServer) -> None:
    server = start_server()
    body = {"image": "guest", "name": "once", "memory": "256M"}
    with contextlib.suppress(httpx.ReadTimeout):  # gives up while QEMU starts
        _post(server.url, "/images/run", body, "run-once", timeout=0.2)
    answer = _post(server.url, "/images/run", body, "run-once", timeout=120)
    assert answer.status_code == 201, answer.text
    vm = answer.json()["vm"]
    assert vm["name"] == "once" and vm["state"] == "running"
    again = _post(server.url, "/images/run", body, "run-once", timeout=120)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["vm"]["details"]["pid"] == vm["details"]["pid"]
    with server.client() as api:
        assert [v["name"] for v in api.get("/vms").json()["vms"]] == ["once"]
        vm_dir = api.get("/vms/once").json()["details"]["vm_dir"]
        assert len(processes_mentioning(vm_dir)) == 1  # one QEMU
        assert api.delete("/vms/once").status_code == 200


def test_a_retry_waits_for_the_first_and_takes_over_when_its_server_died(
    start_server: StartServer, pausing_backends: dict[str, str]
) -> None:
    """The first create stops dead after its disk is made: its client times out; a retry
    waits (then 409 past MEDA_IDEMPOTENCY_WAIT) and makes no second VM. The server is killed
    and started again: the next retry finds the key's owner gone and makes the VM, once."""
    server = start_server(
        **pausing_backends, MEDA_TEST_PAUSE_AT="after-create-disk", MEDA_IDEMPOTENCY_WAIT="2"
    )
    with pytest.raises(httpx.ReadTimeout):
        _post(server.url, "/vms", CUT, "cut-key", timeout=3)
    started = time.monotonic()
    busy = _post(server.url, "/vms", CUT, "cut-key", timeout=30)
    assert busy.status_code == 409 and "still running" in busy.json()["error"], busy.text
    assert time.monotonic() - started >= 2  # it waited for the first
    assert int(busy.headers["retry-after"]) > 0
    other = _post(server.url, "/vms", {**CUT, "memory": "512M"}, "cut-key", timeout=30)
    assert other.status_code == 422 and other.json()["code"] == "IDEMPOTENCY_MISMATCH"
    server.kill(signal.SIGKILL)
    (server.home / "paused-at-after-create-disk").unlink()

    server = start_server(**pausing_backends)  # recovery rolls the cut-short create back
    made = _post(server.url, "/vms", CUT, "cut-key", timeout=120)
    assert made.status_code == 201, made.text
    assert "idempotent-replayed" not in made.headers
    again = _post(server.url, "/vms", CUT, "cut-key", timeout=120)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.content == made.content
    with server.client() as api:
        assert [v["name"] for v in api.get("/vms").json()["vms"]] == ["cut"]
        assert api.delete("/vms/cut").status_code == 200
