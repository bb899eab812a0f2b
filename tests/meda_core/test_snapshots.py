"""Snapshots, restores, clones and templates against the fake backends."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meda_core.backends.roles import DEVICE_LAYOUT
from meda_core.errors import Conflict, InvalidRequest, InvalidState
from meda_core.facade import Meda
from meda_core.models import VM, CreateVMRequest, VMState
from meda_core.testing.fakes import FakeStorage

MakeVM = Callable[..., VM]


def test_snapshot_then_restore_brings_the_saved_state_back(
    fake_meda: Meda, make_vm: MakeVM
) -> None:
    make_vm("vm1")
    fake_meda.vms.start("vm1")
    vm = fake_meda.snapshots.snapshot("vm1")
    assert vm.state == VMState.RUNNING and vm.snapshot is not None
    assert vm.snapshot.disk.exists() and vm.snapshot.state_file.exists()
    assert vm.snapshot.disk.name == vm.disk_file  # the VM's disk, frozen as it was
    # The VM now writes to an overlay on the disk frozen with the snapshot.
    assert fake_meda.backends.storage().disk_info(vm.disk_path).backing_file == vm.snapshot.disk
    fake_meda.vms.stop("vm1")
    restored = fake_meda.snapshots.restore("vm1")
    assert restored.state == VMState.RUNNING
    assert "booted" in restored.console_log.read_text()  # the saved console, then
    assert restored.console_log.read_text().endswith("restored\n")


def test_storage_without_overlays_freezes_a_copy_of_the_disk(
    fake_meda: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw-like storage: the VM keeps writing its own disk; the snapshot holds a copy."""
    monkeypatch.setattr(FakeStorage, "capabilities", frozenset())
    make_vm("vm1")
    fake_meda.vms.start("vm1")
    vm = fake_meda.snapshots.snapshot("vm1")
    assert vm.snapshot is not None and vm.snapshot.disk.read_bytes() == vm.disk_path.read_bytes()
    assert fake_meda.backends.storage().disk_info(vm.disk_path).backing_file is None
    fake_meda.vms.stop("vm1")


def test_snapshot_needs_a_running_vm_and_restore_a_snapshot(
    fake_meda: Meda, make_vm: MakeVM
) -> None:
    make_vm("vm1")
    with pytest.raises(InvalidState):
        fake_meda.snapshots.snapshot("vm1")
    with pytest.raises(Conflict):
        fake_meda.snapshots.restore("vm1")


def test_clones_of_a_template(fake_meda: Meda, fake_image: str) -> None:
    fake_meda.vms.create(CreateVMRequest(name="tpl", memory="256M", template=True))
    fake_meda.vms.start("tpl")
    with pytest.raises(Conflict):
        fake_meda.snapshots.clone("tpl", "early")  # no snapshot yet
    assert fake_meda.store.get_vm("early") is None
    snapshot = fake_meda.snapshots.snapshot("tpl").snapshot
    assert snapshot is not None
    fake_meda.vms.stop("tpl")
    clones = [fake_meda.snapshots.clone("tpl", name) for name in ("c1", "c2")]
    assert len({c.ip for c in [*clones, fake_meda.vms.get("tpl")]}) == 3
    for clone in clones:
        assert clone.state == VMState.RUNNING and clone.clone_of == "tpl"
        assert clone.spec.memory == "256M" and clone.netns is not None
        info = fake_meda.backends.storage().disk_info(clone.disk_path)
        assert info.backing_file == snapshot.disk  # an overlay: shared, not copied
    assert [t.name for t in fake_meda.snapshots.templates()] == ["tpl"]
    with pytest.raises(Conflict):
        fake_meda.vms.delete("tpl")  # its clones' disks rest on it
    for name in ("c1", "c2", "tpl"):
        fake_meda.vms.delete(name)


def test_only_templates_are_cloned(fake_meda: Meda, make_vm: MakeVM) -> None:
    make_vm("plain")
    fake_meda.vms.start("plain")
    fake_meda.snapshots.snapshot("plain")
    with pytest.raises(InvalidRequest):
        fake_meda.snapshots.clone("plain", "c1")


def test_a_snapshot_saved_with_other_devices_is_refused_not_restored(
    fake_meda: Meda, fake_image: str
) -> None:
    """Snapshots of an older meda saw the seed as a disk: restored into today's devices
    (a CD-ROM) the guest would break, so both restore and clone say what to do."""
    fake_meda.vms.create(CreateVMRequest(name="tpl", memory="256M", template=True))
    fake_meda.vms.start("tpl")
    old = fake_meda.snapshots.snapshot("tpl")
    assert old.snapshot is not None and old.snapshot.layout == DEVICE_LAYOUT
    old.snapshot.layout = 1  # as an older meda recorded it
    fake_meda.store.save_vm(old)
    fake_meda.vms.stop("tpl")
    with pytest.raises(Conflict, match="take a new snapshot"):
        fake_meda.snapshots.clone("tpl", "c1")
    assert fake_meda.store.get_vm("c1") is None
    with pytest.raises(Conflict, match="take a new snapshot"):
        fake_meda.snapshots.restore("tpl")
    assert fake_meda.vms.get("tpl").state == VMState.STOPPED


def test_a_clone_is_made_from_the_templates_record(fake_meda: Meda, fake_image: str) -> None:
    """Spec, image, user data and backends come from the template; the network place is
    the clone's own; the clone is no template itself."""
    user_data = "#cloud-config\nhostname: tpl\n"
    request = CreateVMRequest(name="tpl", memory="256M", cpus=2, template=True, user_data=user_data)
    template = fake_meda.vms.create(request)
    with pytest.raises(Conflict, match="no snapshot"):
        fake_meda.vms.clone("early", template)
    assert fake_meda.store.get_vm("early") is None
    fake_meda.vms.start("tpl")
    template = fake_meda.snapshots.snapshot("tpl")
    fake_meda.vms.stop("tpl")
    clone = fake_meda.vms.clone("c1", template)
    assert clone.state == VMState.STOPPED and clone.clone_of == "tpl" and not clone.template
    assert (clone.spec, clone.image, clone.user_data) == (template.spec, template.image, user_data)
    assert (clone.hypervisor, clone.storage) == (template.hypervisor, template.storage)
    assert clone.netns is not None and clone.ip != template.ip
    fake_meda.vms.delete("c1")


def test_a_failed_snapshot_leaves_the_vm_running_with_the_one_it_had(
    fake_meda: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_vm("vm1")
    fake_meda.vms.start("vm1")
    first = fake_meda.snapshots.snapshot("vm1").snapshot
    assert first is not None
    hypervisor = fake_meda.backends.hypervisor()

    def fail(*args: object) -> None:
        raise RuntimeError("the guest would not pause")

    monkeypatch.setattr(hypervisor, "save_state", fail)
    with pytest.raises(RuntimeError, match="would not pause"):
        fake_meda.snapshots.snapshot("vm1")
    vm = fake_meda.vms.get("vm1")
    assert vm.state == VMState.RUNNING and vm.snapshot == first and vm.operation_owner is None
    assert [p.name for p in (vm.vm_dir / "snapshots").iterdir()] == [first.id]
