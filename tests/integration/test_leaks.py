"""100 create/start/delete cycles with VMs killed under meda and the server killed midway:
the host must end exactly as it began."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from meda_core.app import Meda
from meda_core.config import Settings
from meda_core.testing.host import processes_mentioning
from meda_core.testing.namespaces import snapshot
from tests.integration.conftest import StartServer

pytestmark = pytest.mark.vm
CYCLES = 100


def _files(home: Path) -> set[str]:
    ignored = ("state.db", "server.log", "api-token")
    return {
        str(p.relative_to(home)) for p in home.rglob("*")
        if p.is_file() and not p.name.startswith(ignored)
    }  # fmt: skip


def _cycle(api, name: str, kill_vm: bool) -> None:  # type: ignore[no-untyped-def]
    assert api.post("/vms", json={"name": name, "memory": "128M", "disk": "1G"}).status_code == 201
    started = api.post(f"/vms/{name}/start")
    assert started.status_code == 200, started.text
    if kill_vm:  # the hypervisor dies under meda: meda must see it and reclaim everything
        os.kill(started.json()["vm"]["details"]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while api.get(f"/vms/{name}").json()["state"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert api.delete(f"/vms/{name}").status_code == 200


def test_hundred_cycles_leave_the_host_as_it_was(start_server: StartServer, netns: str) -> None:
    server = start_server(MEDA_STOP_TIMEOUT="0.5")
    with server.client() as api:
        _cycle(api, "warmup", kill_vm=False)  # keys, caches and the like exist from here on
    before_ns, before_files = snapshot(netns), _files(server.home)
    kills = restarts = 0
    for i in range(CYCLES):
        if i == CYCLES // 2:
            server.kill(signal.SIGKILL)
            server.start()
            restarts += 1
        with server.client() as api:
            _cycle(api, f"cycle-{i}", kill_vm=i % 10 == 3)
        kills += i % 10 == 3
    with server.client() as api:
        assert api.get("/vms").json() == {"vms": [], "count": 0}
    meda = Meda(Settings(home=server.home, netns=netns))
    assert meda.store.leases("meda0") == [] and meda.store.forwards() == []
    assert snapshot(netns) == before_ns
    assert _files(server.home) == before_files
    assert processes_mentioning(str(server.home / "vms")) == []
    print(f"{CYCLES} cycles, {kills} VMs killed under meda, {restarts} server kill -9: no leaks")
