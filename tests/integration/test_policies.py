"""Lifecycle policies on a real server with real guests: restart after QEMU dies, ttl
across a server restart, each with its event in the journal."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server

pytestmark = pytest.mark.vm


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """``check()``'s first truthy answer, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


def _journal(api: httpx.Client, vm: str) -> list[dict[str, Any]]:
    page = api.get("/events", params={"format": "json", "since": 0, "limit": 500}).json()
    return [e for e in page["events"] if e["data"].get("vm") == vm]


def test_an_on_failure_vm_whose_qemu_is_killed_is_started_again(server: Server) -> None:
    with server.client() as api:
        made = api.post("/vms", json={"name": "crashy", "memory": "256M", "restart": "on-failure"})
        assert made.status_code == 201, made.text
        first = api.post("/vms/crashy/start").json()["vm"]
        pid = first["details"]["pid"]
        os.kill(pid, signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            vm: dict[str, Any] = api.get("/vms/crashy").json()
            back = vm["state"] == "running" and vm["details"]["pid"] not in (None, pid)
            return vm if back else None

        vm = _until(restarted, 60, "the VM was not started again")
        assert vm["lifecycle"]["restarts"] == 1
        assert vm["lifecycle"]["last_restart"] is not None
        kinds = [(e["data"]["kind"], e["data"].get("reason")) for e in _journal(api, "crashy")]
        assert ("stopped", "failure") in kinds
        assert ("restarting", "policy") in kinds
        assert api.delete("/vms/crashy").status_code == 200


def test_a_stopped_by_request_vm_is_not_restarted(server: Server) -> None:
    with server.client() as api:
        body = {"name": "calm", "memory": "256M", "restart": "always"}
        assert api.post("/vms", json=body).status_code == 201
        assert api.post("/vms/calm/start").status_code == 200
        assert api.post("/vms/calm/stop", params={"force": True}).status_code == 200
        time.sleep(3)  # longer than the first backoff
        vm = api.get("/vms/calm").json()
        assert (vm["state"], vm["lifecycle"]["restarts"]) == ("stopped", 0)
        assert api.delete("/vms/calm").status_code == 200


def test_a_ttl_fires_after_a_server_restart(server: Server) -> None:
    with server.client() as api:
        made = api.post("/vms", json={"name": "brief", "memory": "256M", "ttl": 600})
        assert made.status_code == 201, made.text
        pid = api.post("/vms/brief/start").json()["vm"]["details"]["pid"]
        shortened = api.post("/vms/brief/ttl", json={"ttl": 3})
        assert shortened.status_code == 200, shortened.text
        assert shortened.json()["lifecycle"]["expires"] is not None
    server.kill(signal.SIGKILL)  # no server while the deadline passes
    time.sleep(4)
    server.start()
    with server.client() as api:
        _until(lambda: api.get("/vms/brief").status_code == 404, 30, "the VM was not deleted")
        kinds = [(e["data"]["kind"], e["data"].get("reason")) for e in _journal(api, "brief")]
        assert ("expired", "policy") in kinds and ("deleted", "policy") in kinds
    # Killed by the delete; reaped by init, which adopted it when its server died.
    _until(lambda: not Path(f"/proc/{pid}").exists(), 10, f"QEMU {pid} outlived its VM")
