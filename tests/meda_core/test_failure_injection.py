"""Every backend call of every operation fails in turn: afterwards the store and the host
(disks, processes, NICs, leases) must agree, and meda must still work."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meda_core.backends.manager import PluginManager
from meda_core.errors import BackendError, MedaError
from meda_core.facade import Meda
from meda_core.models import TRANSITIONAL, CreateVMRequest, PortForward, Protocol, VMState
from meda_core.settings import Settings
from meda_core.testing.fakes import FakeHypervisor, FakeNetwork, FakePlugin, FakeStorage
from meda_core.testing.host import processes_mentioning

STEPS = {
    FakeHypervisor: ("start", "stop", "cleanup", "is_running", "recover"),
    FakeStorage: ("create_disk", "delete_disk", "disk_info"),
    FakeNetwork: ("allocate", "release", "plug", "unplug", "apply_forwards", "check_host_port"),
}


@dataclass
class Faults:
    """Makes the ``armed``-th backend call from now on raise, once."""

    armed: int = 0
    calls: int = 0
    fired: str | None = None

    def arm(self, nth: int) -> None:
        self.armed, self.calls, self.fired = nth, 0, None

    def disarm(self) -> None:
        self.armed = 0

    def wrap(self, step: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def failing(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.calls += 1
                if self.calls == self.armed:
                    self.fired = step
                    raise BackendError(f"injected failure in {step}")
            return method(*args, **kwargs)

        return failing


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    injected = Faults()
    for cls, steps in STEPS.items():
        for step in steps:
            monkeypatch.setattr(
                cls, step, injected.wrap(f"{cls.__name__}.{step}", getattr(cls, step))
            )
    return injected


def _meda(home: Path) -> Meda:
    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    meda = Meda(Settings(home=home, stop_timeout=5), plugins)
    kernel = home / "vmlinuz"
    kernel.write_bytes(b"kernel")
    meda.images.import_files("default", kernel=kernel)
    return meda


def assert_store_and_host_agree(meda: Meda, step: str | None) -> None:
    vms = {vm.name: vm for vm in meda.store.list_vms()}
    where = f"after a failure in {step}"
    dirs = (
        {p.name for p in meda.settings.vms_dir.iterdir()}
        if meda.settings.vms_dir.exists()
        else set()
    )
    assert dirs == set(vms), f"VM directories and records differ {where}"
    leases = {lease.vm: lease.ip for lease in meda.store.leases("fake")}
    for vm in vms.values():
        assert vm.state not in TRANSITIONAL, f"{vm.name} left {vm.state} {where}"
        if vm.state == VMState.ERROR:  # a clean-up cut short: it says so, delete finishes it
            assert vm.last_error, where
        else:
            assert vm.disk_path.exists(), f"{vm.name} has no disk {where}"
            assert leases.get(vm.name) == vm.ip, f"{vm.name}'s lease and record differ {where}"
        alive = processes_mentioning(f"meda-fake-{vm.uuid}")
        if vm.state == VMState.RUNNING:
            assert vm.runtime is not None and alive == [vm.runtime.pid], where
        elif alive:  # a process meda lost track of would be a leak
            assert vm.state == VMState.ERROR and vm.runtime is not None, where
            assert alive == [vm.runtime.pid], where
        if vm.name in FakeNetwork.plugged:
            assert vm.state in (VMState.RUNNING, VMState.ERROR), f"{vm.name} plugged {where}"
    assert set(leases) <= set(vms), f"a lease outlived its VM {where}"
    forwards = {(vm, f.host_port, f.protocol.value) for vm, f in meda.store.forwards()}
    assert {vm for vm, _, _ in forwards} <= set(vms), f"a forward outlived its VM {where}"
    if not any(vm.state == VMState.ERROR for vm in vms.values()):
        assert FakeNetwork.applied == forwards, f"forwarding rules and records differ {where}"


Setup = Callable[[Meda], None]
Operation = Callable[[Meda], object]
FORWARD = PortForward(host_port=18555, guest_port=80)


def _created(meda: Meda) -> None:
    meda.vms.create(CreateVMRequest(name="vm1"))


def _running(meda: Meda) -> None:
    _created(meda)
    meda.vms.start("vm1")


def _forwarded(meda: Meda) -> None:
    _running(meda)
    meda.network.add_forward("vm1", FORWARD)


CASES: dict[str, tuple[Setup, Operation]] = {
    "create": (lambda meda: None, _created),
    "start": (_created, lambda meda: meda.vms.start("vm1")),
    "stop": (_running, lambda meda: meda.vms.stop("vm1")),
    "delete stopped": (_created, lambda meda: meda.vms.delete("vm1")),
    "delete running": (_running, lambda meda: meda.vms.delete("vm1")),
    "add forward": (_running, lambda meda: meda.network.add_forward("vm1", FORWARD)),
    "remove forward": (
        _forwarded,
        lambda meda: meda.network.remove_forward("vm1", 18555, Protocol.TCP),
    ),
    "create with force": (
        _running,
        lambda meda: meda.vms.create(CreateVMRequest(name="vm1", force=True)),
    ),
}


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[Callable[[str], Meda]]:
    made: list[Meda] = []

    def make(label: str) -> Meda:
        made.append(_meda(tmp_path / label))
        return made[-1]

    yield make
    for meda in made:  # whatever a case left, meda itself must be able to remove
        for vm in meda.store.list_vms():
            meda.vms.delete(vm.name)
        assert processes_mentioning(str(meda.settings.home)) == []


@pytest.mark.parametrize("case", CASES)
def test_a_failure_at_any_step_leaves_store_and_host_agreeing(
    case: str, faults: Faults, homes: Callable[[str], Meda]
) -> None:
    setup, operation = CASES[case]
    steps_failed = []
    for nth in range(1, 50):
        meda = homes(f"{case.replace(' ', '-')}-{nth}")
        FakeNetwork.plugged.clear()
        FakeNetwork.applied = set()
        setup(meda)
        faults.arm(nth)
        try:
            operation(meda)
        except MedaError:
            assert faults.fired is not None  # only the injected failure may fail it
        finally:
            faults.disarm()
        assert_store_and_host_agree(meda, faults.fired)
        if faults.fired is None:
            break  # the operation made fewer than nth backend calls: every step was tried
        steps_failed.append(faults.fired)
    else:
        pytest.fail(f"{case} made 50 backend calls or more")
    assert steps_failed, f"{case} made no backend call"
    print(f"{case}: failed in turn at {', '.join(steps_failed)}")
