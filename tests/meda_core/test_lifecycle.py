"""Lifecycle policies on the fake backends: restarts after a crash or a power-off, ttl
deadlines (across a restart of the serving process), and the events each fires."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meda_core.backends.manager import PluginManager
from meda_core.errors import InvalidRequest
from meda_core.facade import Meda
from meda_core.host import processes as procs
from meda_core.models import VM, CreateVMRequest, RestartPolicy, VMState
from meda_core.settings import Settings
from meda_core.state.events import EventReason
from meda_core.testing.fakes import FakePlugin
from meda_core.vms import lifecycle
from meda_core.vms.lifecycle import backoff, restarts_after


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``check()``'s first truthy answer, asked every 50 ms up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer := check():
            return answer
        time.sleep(0.05)
    raise AssertionError(f"not so after {timeout}s: {check}")


@pytest.fixture
def serving(fake_meda: Meda, fake_image: str) -> Iterator[Meda]:
    """The fake meda as a server runs it: watched, its policies at work."""
    fake_meda.watch()
    yield fake_meda
    fake_meda.unwatch()


def vm_events(meda: Meda, name: str) -> list[tuple[str, str]]:
    """(kind, reason) of every journalled event of VM ``name``, oldest first."""
    return [
        (data["kind"], data["reason"])
        for _, kind, data in meda.store.journal_since(0, 1000)
        if kind == "vm" and data["vm"] == name
    ]


def _started(serving: Meda, restart: RestartPolicy) -> int:
    """VM ``vm1`` made with ``restart`` and started; its fake hypervisor's PID, once that
    process powers off (exits 0) on SIGTERM as a guest would."""
    serving.vms.create(CreateVMRequest(name="vm1", restart=restart))
    runtime = serving.vms.start("vm1").runtime
    assert runtime is not None
    eventually(lambda: _catches_sigterm(runtime.pid))
    return runtime.pid


def _catches_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def test_an_on_failure_vm_whose_hypervisor_is_killed_comes_back(serving: Meda) -> None:
    first = _started(serving, RestartPolicy.ON_FAILURE)
    os.kill(first, signal.SIGKILL)

    def running_again() -> VM | None:
        vm = serving.vms.get("vm1")
        restarted = vm.state == VMState.RUNNING and vm.runtime and vm.runtime.pid != first
        return vm if restarted else None

    vm = eventually(running_again)
    assert vm.lifecycle.restarts == 1 and vm.lifecycle.last_restart is not None
    assert vm_events(serving, "vm1")[-3:] == [
        ("stopped", "failure"),
        ("restarting", "policy"),
        ("started", "policy"),
    ]


def test_an_on_failure_vm_whose_guest_powers_off_stays_off(serving: Meda) -> None:
    os.kill(_started(serving, RestartPolicy.ON_FAILURE), signal.SIGTERM)
    eventually(lambda: serving.vms.get("vm1").state == VMState.STOPPED)
    time.sleep(1.5)  # longer than the first backoff
    vm = serving.vms.get("vm1")
    assert vm.state == VMState.STOPPED and vm.lifecycle.restarts == 0
    assert vm_events(serving, "vm1")[-1] == ("stopped", "guest")


def test_an_always_vm_comes_back_after_its_guest_powers_off(serving: Meda) -> None:
    os.kill(_started(serving, RestartPolicy.ALWAYS), signal.SIGTERM)
    vm = eventually(lambda: (v := serving.vms.get("vm1")).lifecycle.restarts == 1 and v)
    eventually(lambda: serving.vms.get("vm1").state == VMState.RUNNING)
    assert vm.lifecycle.restart == RestartPolicy.ALWAYS


def test_a_vm_stopped_on_request_is_never_restarted(serving: Meda) -> None:
    _started(serving, RestartPolicy.ALWAYS)
    serving.vms.stop("vm1")
    time.sleep(1.5)
    assert serving.vms.get("vm1").state == VMState.STOPPED
    assert vm_events(serving, "vm1")[-1] == ("stopped", "request")


def test_a_ttl_vm_is_deleted_when_it_expires(serving: Meda) -> None:
    vm = serving.vms.create(CreateVMRequest(name="vm1", ttl=1))
    assert vm.lifecycle.expires is not None
    serving.vms.start("vm1")
    eventually(lambda: serving.vms.find("vm1") is None)
    assert vm_events(serving, "vm1")[-2:] == [("expired", "policy"), ("deleted", "policy")]


def test_a_vm_busy_when_its_ttl_expires_is_announced_once_and_deleted_after(
    serving: Meda,
) -> None:
    serving.vms.create(CreateVMRequest(name="vm1", ttl=1))
    me = procs.identify(os.getpid())  # an operation under way, by a live process
    serving.store.transition("vm1", {VMState.STOPPED}, VMState.STARTING, owner=me)
    time.sleep(2.5)  # past the deadline: the turns that find it busy do nothing more
    assert vm_events(serving, "vm1") == [("created", "request"), ("expired", "policy")]
    serving.store.transition("vm1", {VMState.STARTING}, VMState.STOPPED)
    eventually(lambda: serving.vms.find("vm1") is None, timeout=lifecycle.EXPIRED_RETRY + 5)
    assert vm_events(serving, "vm1")[-2:] == [("expired", "policy"), ("deleted", "policy")]


def test_a_ttl_can_be_set_anew(serving: Meda) -> None:
    serving.vms.create(CreateVMRequest(name="vm1", ttl=1))
    vm = serving.vms.set_ttl("vm1", 3600)
    assert vm.lifecycle.expires is not None
    assert vm.lifecycle.expires > datetime.now(UTC) + timedelta(minutes=59)
    time.sleep(1.5)
    assert serving.vms.find("vm1") is not None
    with pytest.raises(InvalidRequest):
        serving.vms.set_ttl("vm1", 0)


def test_a_deadline_outlives_the_process_that_set_it(
    meda_settings: Settings, fake_image: str, fake_meda: Meda
) -> None:
    """The ttl is in the record: a server started after it passed deletes the VM at once."""
    fake_meda.vms.create(CreateVMRequest(name="vm1", ttl=1))
    fake_meda.close()  # the first server goes away before the deadline
    time.sleep(1.2)
    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    again = Meda(meda_settings, plugins)
    again.recover()
    again.watch()
    try:
        eventually(lambda: again.vms.find("vm1") is None, timeout=10)
    finally:
        again.unwatch()
        again.close()


def test_the_policies_say_when_to_restart() -> None:
    assert restarts_after(RestartPolicy.ON_FAILURE, EventReason.FAILURE)
    assert not restarts_after(RestartPolicy.ON_FAILURE, EventReason.GUEST)
    assert restarts_after(RestartPolicy.ALWAYS, EventReason.GUEST)
    assert not restarts_after(RestartPolicy.ALWAYS, EventReason.REQUEST)
    assert not restarts_after(RestartPolicy.NO, EventReason.FAILURE)


def test_backoff_grows_while_a_vm_keeps_failing_and_starts_over_once_it_runs(
    fake_meda: Meda, make_vm: Callable[..., VM]
) -> None:
    vm = make_vm("vm1", restart="on-failure")
    assert backoff(vm, 60) == 1.0
    for expected in (2.0, 4.0, 8.0):
        vm = fake_meda.vms.count_restart("vm1")
        assert backoff(vm, 60) == expected
    vm.lifecycle.restarts = 30
    assert backoff(vm, 60) == 60
    vm.lifecycle.last_restart = datetime.now(UTC) - timedelta(hours=1)
    assert backoff(vm, 60) == 1.0
