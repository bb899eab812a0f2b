from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from meda_core.backends.roles import LaunchSpec
from meda_core.errors import (
    ImageNotFound,
    InvalidRequest,
    InvalidState,
    UnsafeDisk,
    VMExists,
    VMNotFound,
)
from meda_core.facade import Meda
from meda_core.host import processes as procs
from meda_core.models import VM, CreateVMRequest, Image, RuntimeInfo, VMState
from meda_core.testing import disks
from meda_core.testing.fakes import FakeHypervisor, FakeNetwork, FakeStorage
from meda_core.testing.host import processes_mentioning

MakeVM = Callable[..., VM]


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    yield monkeypatch


def test_create_gives_a_stopped_vm_with_a_disk(fake_meda: Meda, make_vm: MakeVM) -> None:
    vm = make_vm("vm1", memory="512M", cpus=2, disk="2G")
    assert vm.state == VMState.STOPPED
    assert vm.disk_path.exists()
    assert fake_meda.backends.storage().disk_info(vm.disk_path).virtual_size == 2 << 30
    assert fake_meda.vms.get("vm1").spec.memory == "512M"


def test_the_disk_is_named_and_launched_as_its_storage_makes_it(
    fake_meda: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing assumes a format: the storage's name and format travel to the hypervisor."""
    monkeypatch.setattr(FakeStorage, "disk_format", "vhdx")
    launched: list[LaunchSpec] = []
    start = FakeHypervisor.start

    def recording(self: FakeHypervisor, launch: LaunchSpec) -> RuntimeInfo:
        launched.append(launch)
        return start(self, launch)

    monkeypatch.setattr(FakeHypervisor, "start", recording)
    vm = make_vm("vm1")
    assert (vm.disk_file, vm.disk_format) == ("disk.vhdx", "vhdx")
    assert vm.disk_path == vm.vm_dir / "disk.vhdx" and vm.disk_path.is_file()
    monkeypatch.setattr(FakeStorage, "disk_format", "fake")  # what was made stays recorded
    fake_meda.vms.start("vm1")
    assert [(x.disk, x.disk_format) for x in launched] == [(vm.disk_path, "vhdx")]
    fake_meda.vms.delete("vm1")
    assert not vm.disk_path.exists()


def test_name_clash_is_a_conflict_unless_forced(fake_meda: Meda, make_vm: MakeVM) -> None:
    first = make_vm("vm1")
    with pytest.raises(VMExists):
        make_vm("vm1")
    second = make_vm("vm1", force=True)
    assert second.uuid != first.uuid


def test_no_image_says_how_to_get_one(fake_meda: Meda) -> None:
    with pytest.raises(ImageNotFound, match="meda images import"):
        fake_meda.vms.create(CreateVMRequest(name="vm1"))
    assert fake_meda.vms.list() == []


def test_failed_create_rolls_back(
    fake_meda: Meda, make_vm: MakeVM, failing: pytest.MonkeyPatch
) -> None:
    failing.setattr(FakeStorage, "fail_create", True)
    with pytest.raises(Exception, match="told to fail"):
        make_vm("vm1")
    assert fake_meda.vms.list() == []
    assert not (fake_meda.settings.vms_dir / "vm1").exists()
    assert fake_meda.store.leases("fake") == []


def test_lifecycle_leaves_nothing_behind(fake_meda: Meda, make_vm: MakeVM) -> None:
    vm = make_vm("vm1")
    vm = fake_meda.vms.start("vm1")
    assert vm.state == VMState.RUNNING and vm.runtime is not None
    runtime = vm.runtime
    assert procs.is_alive(runtime)
    with pytest.raises(InvalidState):
        fake_meda.vms.start("vm1")
    assert fake_meda.vms.stop("vm1").state == VMState.STOPPED
    assert not procs.is_alive(runtime)
    with pytest.raises(InvalidState):
        fake_meda.vms.stop("vm1")
    fake_meda.vms.delete("vm1")
    assert not vm.vm_dir.exists()
    with pytest.raises(VMNotFound):
        fake_meda.vms.get("vm1")


def test_delete_stops_a_running_vm(fake_meda: Meda, make_vm: MakeVM) -> None:
    make_vm("vm1")
    runtime = fake_meda.vms.start("vm1").runtime
    assert runtime is not None
    fake_meda.vms.delete("vm1")
    assert not procs.is_alive(runtime)


def test_failed_start_returns_to_stopped_with_the_error(
    fake_meda: Meda, make_vm: MakeVM, failing: pytest.MonkeyPatch
) -> None:
    make_vm("vm1")
    failing.setattr(FakeHypervisor, "fail_start", True)
    with pytest.raises(Exception, match="told to fail"):
        fake_meda.vms.start("vm1")
    vm = fake_meda.vms.get("vm1")
    assert vm.state == VMState.STOPPED and vm.runtime is None
    assert vm.last_error and "told to fail" in vm.last_error
    assert "vm1" not in FakeNetwork.plugged


def test_guest_that_powered_off_is_seen_as_stopped(fake_meda: Meda, make_vm: MakeVM) -> None:
    make_vm("vm1")
    runtime = fake_meda.vms.start("vm1").runtime
    assert runtime is not None
    procs.kill(runtime)
    FakeHypervisor._children.pop(runtime.pid).wait()
    assert fake_meda.vms.get("vm1").state == VMState.STOPPED
    assert fake_meda.vms.start("vm1").state == VMState.RUNNING


def _dead_owner() -> RuntimeInfo:
    me = procs.identify(1)
    assert me is not None
    return RuntimeInfo(pid=me.pid, start_ticks=me.start_ticks + 1, boot_id=me.boot_id)


def _cut_short(meda: Meda, make_vm: MakeVM, interrupted: VMState, process_left: bool) -> VM:
    """VM ``vm1`` as a crash leaves it: ``interrupted``, its operation's process gone."""
    make_vm("vm1")
    if process_left:
        meda.vms.start("vm1")
    vm = meda.store.require_vm("vm1")
    vm.state, vm.runtime, vm.operation_owner = interrupted, None, _dead_owner()
    meda.store.save_vm(vm)
    return vm


@pytest.mark.parametrize(
    ("interrupted", "process_left", "settled"),
    [
        (VMState.STARTING, True, VMState.RUNNING),
        (VMState.STARTING, False, VMState.STOPPED),
        (VMState.STOPPING, False, VMState.STOPPED),
    ],
)
def test_a_start_or_stop_interrupted_by_a_crash_is_settled(
    fake_meda: Meda,
    make_vm: MakeVM,
    interrupted: VMState,
    process_left: bool,
    settled: VMState,
) -> None:
    _cut_short(fake_meda, make_vm, interrupted, process_left)
    assert fake_meda.vms.get("vm1").state == settled
    fake_meda.vms.delete("vm1")
    assert fake_meda.vms.list() == []


@pytest.mark.parametrize("interrupted", [VMState.CREATING, VMState.DELETING])
@pytest.mark.parametrize("process_left", [True, False])
def test_a_create_or_delete_interrupted_by_a_crash_is_finished(
    fake_meda: Meda, make_vm: MakeVM, interrupted: VMState, process_left: bool
) -> None:
    vm = _cut_short(fake_meda, make_vm, interrupted, process_left)
    assert fake_meda.vms.list() == []  # rolled back (create) or forward (delete)
    with pytest.raises(VMNotFound):
        fake_meda.vms.get("vm1")
    assert not vm.vm_dir.exists()
    assert fake_meda.store.leases("meda0") == []
    assert processes_mentioning(f"meda-fake-{vm.uuid}") == []
    make_vm("vm1")  # the name is free again


def test_operation_owned_by_a_live_process_is_left_alone(fake_meda: Meda, make_vm: MakeVM) -> None:
    make_vm("vm1")
    fake_meda.store.transition("vm1", {VMState.STOPPED}, VMState.STARTING, owner=procs.identify(1))
    assert fake_meda.vms.get("vm1").state == VMState.STARTING
    with pytest.raises(InvalidState):
        fake_meda.vms.start("vm1")
    fake_meda.store.transition("vm1", {VMState.STARTING}, VMState.STOPPED)


def test_disk_smaller_than_image_is_refused(fake_meda: Meda, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "base"
    fake_meda.backends.storage().create_disk(base, 256 << 20)
    fake_meda.images.import_files("big", disk=base)
    with pytest.raises(InvalidRequest, match="smaller than the image"):
        fake_meda.vms.create(CreateVMRequest(name="vm1", image="big", disk="128M"))
    assert fake_meda.vms.list() == []


def test_events_follow_the_lifecycle(fake_meda: Meda, make_vm: MakeVM) -> None:
    from meda_core import hookimpl
    from meda_core.state.events import VMEvent

    seen: list[str] = []

    class Observer:
        @hookimpl
        def meda_vm_event(self, event: VMEvent) -> None:
            seen.append(f"{event.kind.value}:{event.vm}")

    fake_meda.plugins.add_plugin("observer", Observer())
    make_vm("vm1")
    fake_meda.vms.start("vm1")
    fake_meda.vms.stop("vm1")
    fake_meda.vms.delete("vm1")
    assert seen == ["created:vm1", "started:vm1", "stopped:vm1", "deleted:vm1"]


def test_vm_of_a_missing_hypervisor_plugin_is_still_listed(
    fake_meda: Meda, make_vm: MakeVM
) -> None:
    vm = make_vm("vm1")
    vm.hypervisor = "uninstalled"
    fake_meda.store.save_vm(vm)
    assert [v.name for v in fake_meda.vms.list()] == ["vm1"]
    vm.hypervisor = "fake"
    fake_meda.store.save_vm(vm)


def test_network_follows_the_lifecycle(fake_meda: Meda, make_vm: MakeVM) -> None:
    vm = make_vm("vm1")
    assert vm.ip == "10.99.0.2" and vm.mac and vm.network == "fake"
    assert make_vm("vm2").ip == "10.99.0.3"
    fake_meda.vms.start("vm1")
    assert "vm1" in FakeNetwork.plugged
    fake_meda.vms.stop("vm1")
    assert "vm1" not in FakeNetwork.plugged
    fake_meda.vms.delete("vm1")
    assert [lease.vm for lease in fake_meda.store.leases("fake")] == ["vm2"]
    assert make_vm("vm3").ip == "10.99.0.2"  # released addresses are reused


def test_cleanup_finds_and_removes_orphaned_leases(fake_meda: Meda, make_vm: MakeVM) -> None:
    make_vm("vm1")
    fake_meda.store.allocate_lease("fake", "ghost", ["10.99.0.200"], lambda: "52:54:00:00:00:01")
    report = fake_meda.network.cleanup(dry_run=True)
    assert report.orphans == ["lease 10.99.0.200 of missing VM 'ghost'"]
    assert len(fake_meda.store.leases("fake")) == 2  # a dry run really changes nothing
    assert fake_meda.network.cleanup(dry_run=False).count == 1
    assert [lease.vm for lease in fake_meda.store.leases("fake")] == ["vm1"]


def test_a_vm_whose_disk_rests_on_a_host_file_is_not_started(
    fake_meda: Meda, make_vm: MakeVM, stored_by_older_meda: Image
) -> None:
    # What an older meda made of the image: an overlay on its blob, which names the host file.
    vm = make_vm("victim")
    vm.disk_path.unlink()
    assert stored_by_older_meda.disk is not None
    disks.backed_by(vm.disk_path, stored_by_older_meda.disk, "qcow2")
    with pytest.raises(UnsafeDisk, match="image disk backed"):
        fake_meda.vms.start("victim")
    stopped = fake_meda.vms.get("victim")
    assert stopped.state == VMState.STOPPED and stopped.runtime is None
    assert "victim" not in FakeNetwork.plugged


def test_a_vm_whose_disk_rests_on_a_host_file_is_not_imaged(
    fake_meda: Meda, make_vm: MakeVM, stored_by_older_meda: Image
) -> None:
    """A stopped VM an older meda made, never started since: flattening its disk would
    copy the host file into an image that can be pushed."""
    vm = make_vm("victim")
    vm.disk_path.unlink()
    assert stored_by_older_meda.disk is not None
    disks.backed_by(vm.disk_path, stored_by_older_meda.disk, "qcow2")
    with pytest.raises(UnsafeDisk, match="image disk backed"):
        fake_meda.images.create_from_vm("victim", "leak", "v1", None, None)
    assert fake_meda.store.get_image("leak", "v1") is None
