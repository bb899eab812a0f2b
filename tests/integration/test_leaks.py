"""100 create/start/delete cycles with VMs killed under meda and the server killed midway:
the host must end exactly as it began."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_core.testing.host import open_sockets, processes_mentioning, unix_sockets_under
from meda_core.testing.namespaces import snapshot
from tests.integration.conftest import Server, StartServer

pytestmark = pytest.mark.vm
CYCLES = 100


def _files(home: Path) -> set[str]:
    ignored = ("state.db", "server.log", "api-token")
    return {
        str(p.relative_to(home))
        for p in home.rglob("*")
        if not p.is_dir() and not p.name.startswith(ignored)
    }


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


def _server_sockets(server: Server) -> int:
    """Sockets the server holds once idle (closing a client's connection is asynchronous)."""
    assert server.process is not None
    counts = []
    for _ in range(40):
        counts.append(open_sockets(server.process.pid))
        if counts[-3:] == [counts[-1]] * 3:
            break
        time.sleep(0.05)
    return counts[-1]


def test_hundred_cycles_leave_the_host_as_it_was(start_server: StartServer, netns: str) -> None:
    server = start_server(MEDA_STOP_TIMEOUT="0.5")
    with server.client() as api:
        _cycle(api, "warmup", kill_vm=False)  # keys, caches and the like exist from here on
    before_ns, before_files = snapshot(netns), _files(server.home)
    before_unix = unix_sockets_under(server.home)
    kills = restarts = 0
    server_sockets: list[int] = []
    for i in range(CYCLES):
        if i == CYCLES // 2:
            server_sockets.append(_server_sockets(server))
            server.kill(signal.SIGKILL)
            server.start()
            restarts += 1
        with server.client() as api:
            _cycle(api, f"cycle-{i}", kill_vm=i % 10 == 3)
        kills += i % 10 == 3
        if i in (0, CYCLES // 2):
            server_sockets.append(_server_sockets(server))
    server_sockets.append(_server_sockets(server))
    with server.client() as api:
        assert api.get("/vms").json() == {"vms": [], "count": 0}
    meda = Meda(Settings(home=server.home, netns=netns))
    assert meda.store.leases("meda0") == [] and meda.store.forwards() == []
    assert snapshot(netns) == before_ns
    assert _files(server.home) == before_files
    assert unix_sockets_under(server.home) == before_unix == []
    # Each server process holds as many sockets after its 50 cycles as after its first.
    assert server_sockets[0] == server_sockets[1] and server_sockets[2] == server_sockets[3]
    assert processes_mentioning(str(server.home / "vms")) == []
    print(
        f"{CYCLES} cycles, {kills} VMs killed under meda, {restarts} server kill -9, "
        f"server sockets {server_sockets}: no leaks"
    )
