"""``kill -9`` of ``meda serve``: running VMs are re-adopted, cut-short operations finished."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from meda_core.testing.guest import HTTP_PAGE
from meda_core.testing.host import free_port, processes_mentioning
from meda_core.testing.namespaces import pids_in, snapshot
from tests.integration.conftest import Server, StartServer
from tests.integration.test_network import guest_ip, http_get, start_vm

WEB_PORT = free_port()  # forwards also listen on the host's loopback
CUT_PORT = free_port()  # forwards also listen on the host's loopback

pytestmark = pytest.mark.vm


def _recovery_ms(server: Server) -> float:
    """How long the last start's recovery took, from the server's log."""
    found = re.findall(
        r"recovered \d+ VM\(s\), \d+ running, in (\d+) ms", (server.home / "server.log").read_text()
    )
    assert found, (server.home / "server.log").read_text()[-2000:]
    return float(found[-1])


def _dnsmasq(netns: str) -> list[int]:
    return [p for p in pids_in(netns) if b"dnsmasq" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_running_vms_are_readopted_with_their_address_and_forwards(
    server: Server, netns: str
) -> None:
    with server.client() as api:
        web = start_vm(api, "web")
        start_vm(api, "other")
        guest_ip(web)
        api.post("/vms/web/port-forward", json={"host_port": WEB_PORT, "guest_port": 80})
        before = api.get("/vms").json()
    server.kill(signal.SIGKILL)
    for pid in _dnsmasq(netns):  # its pid file goes stale: the restart must notice
        os.kill(pid, signal.SIGKILL)

    server.start()
    with server.client() as api:
        assert api.get("/vms").json() == before  # same state, pid, IP and forwards
    recovery_ms = _recovery_ms(server)
    print(f"2 running VMs re-adopted in {recovery_ms:.0f} ms after restart")
    assert recovery_ms < 1000
    assert len(_dnsmasq(netns)) == 1
    assert http_get(netns, f"http://127.0.0.1:{WEB_PORT}/") == HTTP_PAGE
    with server.client() as api:
        for vm in before["vms"]:
            assert api.delete(f"/vms/{vm['name']}").status_code == 200


def _kill_while_paused(server: Server, step: str, method: str, path: str, **kw: object) -> None:
    """Send a request, wait until the server stops dead at ``step``, then kill -9 it."""

    def send() -> None:
        with contextlib.suppress(httpx.TransportError):  # the server dies under it
            httpx.request(method, f"{server.url}{path}", timeout=120, **kw)  # type: ignore[arg-type]

    threading.Thread(target=send, daemon=True).start()
    marker = server.home / f"paused-at-{step}"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, (server.home / "server.log").read_text()[-2000:]
        time.sleep(0.05)
    server.kill(signal.SIGKILL)
    marker.unlink()


CUT = {"name": "cut", "memory": "256M"}


def test_a_create_cut_short_is_rolled_back(
    start_server: StartServer, pausing_backends: dict[str, str], netns: str
) -> None:
    empty = snapshot(netns)
    server = start_server(**pausing_backends, MEDA_TEST_PAUSE_AT="after-create-disk")
    _kill_while_paused(server, "after-create-disk", "POST", "/vms", json=CUT)
    assert (server.home / "vms" / "cut" / "disk.qcow2").exists()  # half-made

    server = start_server(**pausing_backends)
    with server.client() as api:
        assert api.get("/vms/cut").status_code == 404
        assert not (server.home / "vms" / "cut").exists()
        assert snapshot(netns) == empty
        assert api.post("/vms", json=CUT).status_code == 201  # the name is free again
        assert api.delete("/vms/cut").status_code == 200


def test_a_start_cut_short_is_rolled_forward(
    start_server: StartServer, pausing_backends: dict[str, str]
) -> None:
    server = start_server(**pausing_backends, MEDA_TEST_PAUSE_AT="after-start")
    with server.client() as api:
        assert api.post("/vms", json=CUT).status_code == 201
    _kill_while_paused(server, "after-start", "POST", "/vms/cut/start")
    vm_dir = server.home / "vms" / "cut"
    [qemu] = processes_mentioning(str(vm_dir))

    server = start_server(**pausing_backends)
    with server.client() as api:
        vm = api.get("/vms/cut").json()
        assert (vm["state"], vm["details"]["pid"]) == ("running", qemu)
        assert vm["ip"] is not None
        guest_ip(vm)  # booted: it powers off at the ACPI button, not after the stop timeout
        assert api.delete("/vms/cut").status_code == 200
    assert processes_mentioning(str(vm_dir)) == []


def test_a_delete_cut_short_is_rolled_forward(
    start_server: StartServer, pausing_backends: dict[str, str], netns: str
) -> None:
    empty = snapshot(netns)
    server = start_server(**pausing_backends, MEDA_TEST_PAUSE_AT="before-delete-disk")
    with server.client() as api:
        guest_ip(start_vm(api, "cut"))  # booted: it powers off at the ACPI button
        api.post("/vms/cut/port-forward", json={"host_port": CUT_PORT, "guest_port": 80})
    _kill_while_paused(server, "before-delete-disk", "DELETE", "/vms/cut")
    vm_dir = server.home / "vms" / "cut"
    assert vm_dir.exists()

    server = start_server(**pausing_backends)
    with server.client() as api:
        assert api.get("/vms/cut").status_code == 404
    assert not vm_dir.exists() and processes_mentioning(str(vm_dir)) == []
    assert snapshot(netns) == empty
