"""Snapshots, restores, clones and templates against the fake backends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from meda_core.backends.roles import DEVICE_LAYOUT, AgentChannel, Capability
from meda_core.errors import BackendError, Conflict, InvalidRequest, InvalidState
from meda_core.facade import Meda
from meda_core.models import VM, CreateVMRequest, VMState
from meda_core.testing.fakeagent import SCRATCH, FakeAgent
from meda_core.testing.fakes import FakeHypervisor, FakeStorage

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


def _cloned(fake_meda: Meda, name: str) -> VM:
    """A clone ``name`` of a fresh template ``tpl`` (made on first use)."""
    if fake_meda.store.get_vm("tpl") is None:
        fake_meda.vms.create(CreateVMRequest(name="tpl", memory="256M", template=True))
        fake_meda.vms.start("tpl")
        fake_meda.snapshots.snapshot("tpl")
        fake_meda.vms.stop("tpl")
    return fake_meda.snapshots.clone("tpl", name)


def test_a_clone_takes_its_name_as_hostname_through_its_agent(
    fake_meda: Meda, fake_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meda_core.vms.guest")
    clones = [_cloned(fake_meda, name) for name in ("c1", "c2")]
    for clone in clones:
        etc = clone.vm_dir / SCRATCH / "etc"
        assert (etc / "hostname").read_text() == f"{clone.name}\n"
        assert f"identity of VM {clone.name} set through its agent" in caplog.text


@pytest.mark.parametrize(
    "why",
    ["no agent channel", "cannot set identities", "refused", "not asked"],
)
def test_a_clone_whose_agent_sets_no_identity_is_made_all_the_same(
    fake_meda: Meda,
    fake_image: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    why: str,
) -> None:
    """The guest keeps its seed's hostname; a log line says why, and the clone works."""
    if why == "no agent channel":
        monkeypatch.setattr(FakeHypervisor, "agent", False)
    elif why == "cannot set identities":
        monkeypatch.setattr(FakeAgent, "capabilities", frozenset({Capability.EXEC_STREAM}))
    elif why == "refused":

        def refuse(self: FakeAgent, channel: AgentChannel, hostname: str) -> None:
            raise BackendError("ssh-keygen: no space left")

        monkeypatch.setattr(FakeAgent, "set_identity", refuse)
    else:
        monkeypatch.setattr(fake_meda.settings, "clone_agent_wait", 0.0)
    started = time.monotonic()
    clone = _cloned(fake_meda, "c1")
    assert clone.state == VMState.RUNNING
    assert time.monotonic() - started < fake_meda.settings.clone_agent_wait + 2
    assert not (clone.vm_dir / SCRATCH / "etc" / "hostname").exists()
    assert "identity of VM c1 not refreshed (its seed's hostname only)" in caplog.text
    expected = {
        "no agent channel": "its hypervisor gives it no agent channel",
        "cannot set identities": "no agent backend here sets identities",
        "refused": "ssh-keygen: no space left",
        "not asked": "no agent answered in 0s",
    }[why]
    assert expected in caplog.text
