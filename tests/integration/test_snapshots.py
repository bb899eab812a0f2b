"""Snapshots, restores and clones with QEMU: the guest's memory comes back, clones are
distinct machines (their own hostname and machine-id, set through their agent)."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from meda_core.testing.host import processes_mentioning
from tests.integration.conftest import Server
from tests.integration.test_network import guest_ip, http_get, start_vm

pytestmark = pytest.mark.vm


def guest_state(netns: str, ip: str) -> tuple[str, int]:
    """The guest's boot token and counter, both held only in its memory."""
    deadline = time.monotonic() + 30
    while True:
        token = http_get(netns, f"http://{ip}/token")
        counter = http_get(netns, f"http://{ip}/counter")
        if token and counter.isdigit():
            return token, int(counter)
        assert time.monotonic() < deadline, "the guest's HTTP server does not answer"
        time.sleep(0.2)


def guest_exec(api: httpx.Client, name: str, script: str) -> str:
    """What ``sh -c script`` prints in the guest ``name``, run through its agent."""
    answer = api.post(f"/vms/{name}/exec", json={"command": ["sh", "-c", script]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["exit_code"] == 0, answer.json()
    return str(answer.json()["stdout"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_restored_guest_has_its_memory_back(server: Server, netns: str) -> None:
    with server.client() as api:
        vm = start_vm(api, "snap")
        ip = guest_ip(vm)
        token, before = guest_state(netns, ip)
        snap = api.post("/vms/snap/snapshot")
        assert snap.status_code == 200, snap.text
        info = snap.json()["vm"]["details"]["snapshot"]
        print(f"saved {info['state_size']} in {info['save_seconds']} s")
        assert guest_state(netns, ip)[0] == token  # it kept running
        assert api.post("/vms/snap/stop").status_code == 200
        restored = api.post("/vms/snap/restore")
        assert restored.status_code == 200, restored.text
        assert restored.json()["vm"]["state"] == "running"
        again, counter = guest_state(netns, ip)
        # A cold boot would draw a new token and count from 1: this is the saved memory.
        assert again == token and before <= counter <= before + 20
        assert api.delete("/vms/snap").status_code == 200


def test_two_clones_of_a_template_are_distinct_machines(server: Server, netns: str) -> None:
    with server.client() as api:
        created = api.post("/vms", json={"name": "tpl", "memory": "256M", "template": True})
        assert created.status_code == 201, created.text
        assert api.post("/vms/tpl/start").status_code == 200
        tpl_ip = api.get("/vms/tpl/ip").json()["ip"]
        token, _ = guest_state(netns, tpl_ip)  # reached through the template's NAT
        # The busybox guest has no /etc: give the template one with a machine-id.
        assert guest_exec(api, "tpl", f"mkdir /etc && echo {'0' * 32} > /etc/machine-id") == ""
        snap = api.post("/vms/tpl/snapshot").json()["vm"]
        frozen = Path(snap["details"]["vm_dir"]) / "snapshots"
        [frozen_disk] = frozen.glob("*/disk.qcow2")
        frozen_sum = _sha256(frozen_disk)
        assert api.post("/vms/tpl/stop").status_code == 200

        def clone(name: str) -> httpx.Response:
            return api.post("/vms/tpl/clone", json={"name": name})

        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            clones = list(pool.map(clone, ["c1", "c2"]))
        assert [c.status_code for c in clones] == [201, 201], [c.text for c in clones]
        ips = [api.get(f"/vms/{n}/ip").json()["ip"] for n in ("c1", "c2")]
        assert len({*ips, tpl_ip}) == 3
        states = [guest_state(netns, ip) for ip in ips]
        print(f"2 clones answering {time.monotonic() - started:.2f} s after the clone calls")
        assert [t for t, _ in states] == [token, token]  # the template's memory, in both
        # ...but each its own machine: the agent set what the seed's hostname does not.
        for name in ("c1", "c2"):
            assert guest_exec(api, name, "hostname; cat /etc/hostname") == f"{name}\n{name}\n"
        ids = [guest_exec(api, n, "cat /etc/machine-id") for n in ("c1", "c2")]
        assert len({*ids, "0" * 32 + "\n"}) == 3, ids
        templates = api.get("/templates").json()
        assert templates["templates"][0]["clones"] == ["c1", "c2"]
        assert api.delete("/vms/tpl").status_code == 409  # clones depend on it

        time.sleep(2)  # both guests write their counter to their disk every second
        disks = [
            Path(api.get(f"/vms/{n}").json()["details"]["vm_dir"]) / "disk.qcow2"
            for n in ("c1", "c2")
        ]
        for disk in disks:
            assert disk.stat().st_size > 256 * 1024  # written to: clusters allocated
        assert _sha256(frozen_disk) == frozen_sum  # the shared base is never written
        for name in ("c1", "c2", "tpl"):
            vm_dir = api.get(f"/vms/{name}").json()["details"]["vm_dir"]
            assert api.delete(f"/vms/{name}").status_code == 200
            assert processes_mentioning(vm_dir) == []
