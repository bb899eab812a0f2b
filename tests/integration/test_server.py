"""End to end: the seed's curl sequence against ``meda serve`` with a guest that really boots."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from meda_core.testing.guest import BOOT_MARKER, POWEROFF_MARKER
from meda_core.testing.host import processes_mentioning
from meda_core.testing.pytest_plugin import wait_for_text
from tests.integration.conftest import RunMeda, Server, StartServer

pytestmark = pytest.mark.vm
SEED_CREATE = {"name": "api-test", "memory": "2G", "cpus": 4, "disk": "20G"}


def test_seed_sequence_boots_a_real_guest_and_leaves_nothing(server: Server) -> None:
    with server.client() as api:
        created = api.post("/vms", json=SEED_CREATE)
        assert created.status_code == 201, created.text
        assert api.post("/vms", json=SEED_CREATE).status_code == 409

        started = api.post("/vms/api-test/start")
        assert started.status_code == 200, started.text
        vm = api.get("/vms/api-test").json()
        assert vm["state"] == "running"
        assert vm["details"]["accelerator"] in {"kvm", "tcg"}
        vm_dir = Path(vm["details"]["vm_dir"])
        boot_seconds = wait_for_text(vm_dir / "console.log", BOOT_MARKER, timeout=60)
        print(f"guest init reached {boot_seconds:.2f}s after start returned")
        uuid_pids = processes_mentioning(str(vm_dir))
        assert uuid_pids == [vm["details"]["pid"]]

        stopped = api.post("/vms/api-test/stop")
        assert stopped.status_code == 200 and stopped.json()["vm"]["state"] == "stopped"
        assert POWEROFF_MARKER in (vm_dir / "console.log").read_text()
        assert processes_mentioning(str(vm_dir)) == []

        assert api.delete("/vms/api-test").status_code == 200
        assert api.get("/vms/api-test").status_code == 404
        assert api.delete("/vms/api-test").status_code == 404
        assert not vm_dir.exists()
        assert api.get("/vms").json() == {"vms": [], "count": 0}


def test_vms_outlive_a_killed_server_and_are_reported_after_restart(server: Server) -> None:
    with server.client() as api:
        assert api.post("/vms", json={"name": "survivor", "memory": "256M"}).status_code == 201
        assert api.post("/vms/survivor/start").status_code == 200
        before = api.get("/vms/survivor").json()
    server.kill(signal.SIGKILL)
    pid = before["details"]["pid"]
    assert processes_mentioning(before["details"]["vm_dir"]) == [pid]

    server.start()
    with server.client() as api:
        after = api.get("/vms/survivor").json()
        assert after["state"] == "running"
        assert after["details"]["pid"] == pid
        assert after["details"]["accelerator"] == before["details"]["accelerator"]
        wait_for_text(Path(after["details"]["console_log"]), BOOT_MARKER, timeout=60)
        assert api.delete("/vms/survivor").status_code == 200
    assert processes_mentioning(before["details"]["vm_dir"]) == []


def test_a_guest_that_powers_off_is_reported_stopped(server: Server) -> None:
    with server.client() as api:
        api.post("/vms", json={"name": "short", "memory": "256M"})
        vm = api.post("/vms/short/start").json()["vm"]
        runtime_pid = vm["details"]["pid"]
        wait_for_text(Path(vm["details"]["console_log"]), BOOT_MARKER, timeout=60)
        # The VM process ends without meda (as when the guest powers off): QEMU is gone.
        os.kill(runtime_pid, signal.SIGTERM)
        for _ in range(100):
            if api.get("/vms/short").json()["state"] == "stopped":
                break
            time.sleep(0.1)
        assert api.get("/vms/short").json()["state"] == "stopped"
        assert api.post("/vms/short/start").status_code == 200


def test_plugins_report_a_broken_plugin_and_meda_still_works(
    run_meda: RunMeda, broken_plugin_dir: Path
) -> None:
    env = {"PYTHONPATH": str(broken_plugin_dir)}
    result = run_meda("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plugins = {p["name"]: p for p in report["plugins"]}
    assert "this plugin is broken" in plugins["broken"]["error"]
    assert plugins["qemu"]["backends"] == ["hypervisor:qemu"] and plugins["qemu"]["version"]
    assert plugins["qcow2"]["backends"] == ["storage:qcow2"]
    backends = {(b["role"], b["name"]): b for b in report["backends"]}
    assert backends[("hypervisor", "qemu")]["selected"]
    assert run_meda("list", "--json", env=env).returncode == 0


def test_events_stream_vm_lifecycle_as_sse(server: Server) -> None:
    import httpx

    seen: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{server.url}/events", timeout=30) as stream:
            for line in stream.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]).get("kind", ""))
                    if "deleted" in seen:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10)
    with server.client() as api:
        api.post("/vms", json={"name": "watched"})
        api.delete("/vms/watched")
    listener.join(15)
    assert seen == ["created", "deleted"]


def test_the_cli_boots_a_vm_on_a_server_that_wants_a_token(
    start_server: StartServer, run_meda: RunMeda
) -> None:
    server = start_server(MEDA_API_TOKEN="tok-123-long-enough-token")
    remote = {
        "MEDA_URL": f"http://127.0.0.1:{server.port}",
        "MEDA_API_TOKEN": "tok-123-long-enough-token",
    }
    assert run_meda("list", env={**remote, "MEDA_API_TOKEN": "wrong"}).returncode == 7
    created = run_meda("create", "far", "--memory", "256M", env=remote)
    assert created.returncode == 0, created.stderr
    started = run_meda("start", "far", "--json", env=remote)
    assert started.returncode == 0, started.stderr
    vm = json.loads(started.stdout)["vm"]
    wait_for_text(Path(vm["details"]["console_log"]), BOOT_MARKER, timeout=60)
    assert run_meda("delete", "far", env=remote).returncode == 0
    assert processes_mentioning(vm["details"]["vm_dir"]) == []
