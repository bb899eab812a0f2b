"""Stops and deletes that do not wait on a guest that ignores ACPI: force, timeout, and
a delete that kills at once (the disk goes anyway)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.facade import Meda
from meda_core.models import CreateVMRequest, VMState
from meda_core.settings import Settings
from meda_core.testing.guest import DISK_BOOT_MARKER, boot_sector_disk
from meda_core.testing.host import processes_mentioning
from meda_core.testing.pytest_plugin import wait_for_text

pytestmark = pytest.mark.vm
#: What MEDA_STOP_TIMEOUT is in these tests: a stop that waits for it is plainly slow.
STOP_TIMEOUT = 30


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A MEDA_HOME with ``deaf``: a disk whose boot sector halts, deaf to ACPI like a
    guest without a power-button handler."""
    home = tmp_path / "home"
    meda = Meda(_settings(home))
    meda.images.import_files("deaf", disk=boot_sector_disk(tmp_path / "deaf.raw"))
    yield home
    Meda(_settings(home)).vms.delete_all()  # killed at once: deletes do not wait


def _settings(home: Path) -> Settings:
    return Settings(
        home=home,
        hypervisor="qemu",
        storage="qcow2",
        network="user",
        default_image="deaf",
        stop_timeout=STOP_TIMEOUT,
    )


def _running(home: Path, name: str) -> Meda:
    meda = Meda(_settings(home))
    if meda.store.get_vm(name) is None:
        meda.vms.create(CreateVMRequest(name=name, memory="64M", disk="16M"))
    vm = meda.vms.start(name)
    wait_for_text(vm.console_log, DISK_BOOT_MARKER, timeout=60)
    vm.console_log.write_text("")  # the next boot's marker is a new one
    return meda


def _meda_cli(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        **os.environ,
        "MEDA_HOME": str(home),
        "MEDA_HYPERVISOR": "qemu",
        "MEDA_STORAGE": "qcow2",
        "MEDA_NETWORK": "user",
        "MEDA_DEFAULT_IMAGE": "deaf",
        "MEDA_STOP_TIMEOUT": str(STOP_TIMEOUT),
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "meda_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, time.monotonic() - started


def test_cli_stop_force_and_timeout_do_not_wait_for_the_stop_timeout(home: Path) -> None:
    meda = _running(home, "deaf1")
    done, seconds = _meda_cli(home, "stop", "deaf1", "--force")
    assert done.returncode == 0, done.stderr
    assert "Stopped VM: deaf1 (forced)" in done.stdout
    print(f"meda stop --force: {seconds:.2f}s")
    assert seconds < 10
    assert meda.vms.get("deaf1").state == VMState.STOPPED

    _running(home, "deaf1")
    done, seconds = _meda_cli(home, "stop", "deaf1", "--timeout", "2")
    assert done.returncode == 0, done.stderr
    print(f"meda stop --timeout 2: {seconds:.2f}s")
    assert 2 <= seconds < 12  # ACPI for 2 s, unanswered, then killed

    done, _ = _meda_cli(home, "stop", "deaf1", "--force", "--timeout", "3")
    assert done.returncode == 2 and "not both" in done.stderr


def test_delete_of_a_running_vm_kills_it_at_once_unless_given_a_timeout(home: Path) -> None:
    meda = _running(home, "deaf2")
    vm_dir = str(meda.vms.get("deaf2").vm_dir)
    done, seconds = _meda_cli(home, "delete", "deaf2")
    assert done.returncode == 0, done.stderr
    print(f"meda delete of a running VM deaf to ACPI: {seconds:.2f}s")
    assert seconds < 10
    assert processes_mentioning(vm_dir) == [] and meda.store.get_vm("deaf2") is None

    _running(home, "deaf2")
    done, seconds = _meda_cli(home, "delete", "deaf2", "--timeout", "2")
    assert done.returncode == 0, done.stderr
    assert 2 <= seconds < 12


def test_api_stop_and_delete_take_force_and_timeout(home: Path) -> None:
    meda = _running(home, "deaf3")
    with TestClient(create_app(meda), base_url="http://localhost") as api:
        params = {
            p["name"]
            for p in api.get("/api/v1/openapi.json").json()["paths"]["/api/v1/vms/{name}/stop"][
                "post"
            ]["parameters"]
        }
        assert {"force", "timeout"} <= params
        for bad in ({"force": "true", "timeout": "3"}, {"timeout": "-1"}, {"timeout": "1e9"}):
            refused = api.post("/api/v1/vms/deaf3/stop", params=bad)
            assert refused.status_code in (400, 422), refused.text
        assert meda.vms.get("deaf3").state == VMState.RUNNING  # nothing changed
        started = time.monotonic()
        stopped = api.post("/api/v1/vms/deaf3/stop", params={"timeout": "0"})
        assert stopped.status_code == 200 and time.monotonic() - started < 10
        assert stopped.json()["vm"]["state"] == "stopped"

        _running(home, "deaf3")
        started = time.monotonic()
        deleted = api.delete("/api/v1/vms/deaf3", params={"force": "true"})
        assert deleted.status_code == 200 and time.monotonic() - started < 10
