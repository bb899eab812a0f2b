from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import meda_qcow2
from meda_core.backends.manager import PluginManager
from meda_core.backends.roles import BackendContext
from meda_core.errors import UnsafeDisk
from meda_core.facade import Meda
from meda_core.images import diskprobe
from meda_core.models import CreateVMRequest
from meda_core.settings import Settings
from meda_core.testing import disks
from meda_core.testing.conformance import StorageConformance
from meda_core.testing.fakes import FakePlugin
from meda_qcow2 import Qcow2Storage


class TestQcow2Conformance(StorageConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> Qcow2Storage:
        backend = Qcow2Storage(backend_context)
        if not backend.check_available().ok:
            pytest.skip(backend.check_available().reason or "")
        return backend


def test_overlay_writes_do_not_touch_the_base(
    tmp_path: Path, backend_context: BackendContext
) -> None:
    storage = Qcow2Storage(backend_context)
    base = tmp_path / "base.raw"
    base.write_bytes(b"\xab" * 4096)
    before = base.read_bytes()
    info = storage.create_disk(tmp_path / "vm.qcow2", 1 << 30, base, "raw")
    assert info.format == "qcow2" and info.virtual_size == 1 << 30
    assert info.actual_size < 1 << 20  # copy-on-write: nothing copied
    assert base.read_bytes() == before
    assert not (tmp_path / "vm.qcow2.tmp").exists()


def guest_written(path: Path, secret: Path) -> Path:
    """A raw disk whose bytes a guest wrote: a qcow2 header naming a host file."""
    header = disks.backed_by(path.with_name("header.qcow2"), secret).read_bytes()
    path.write_bytes(header.ljust(disks.MiB, b"\0"))
    return path


@pytest.mark.parametrize("hostile", ["guest-written", "backed"])
def test_a_vm_disk_never_rests_on_a_host_file(
    tmp_path: Path, backend_context: BackendContext, host_secret: Path, hostile: str
) -> None:
    storage = Qcow2Storage(backend_context)
    if hostile == "guest-written":
        base = guest_written(tmp_path / "base", host_secret)
    else:
        base = disks.backed_by(tmp_path / "base", host_secret)
    vm = tmp_path / "vm.qcow2"
    try:
        storage.create_disk(vm, 1 << 30, base)  # the format is left to the backend
    except UnsafeDisk:
        assert not vm.exists()
        return
    assert host_secret.read_bytes() not in disks.virtual_content(vm, "qcow2")


@pytest.fixture
def qcow2_meda(meda_settings: Settings) -> Iterator[Meda]:
    """The fake hypervisor and network, the real qcow2 storage."""
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io is not installed (apt-get install qemu-utils)")
    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    plugins.add_plugin("qcow2", meda_qcow2)
    meda = Meda(meda_settings.model_copy(update={"storage": "qcow2"}), plugins)
    yield meda
    meda.vms.delete_all()


def test_an_image_from_a_vm_holds_what_the_guest_wrote_and_no_host_file(
    qcow2_meda: Meda, tmp_path: Path, host_secret: Path
) -> None:
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\xeb\x63\x90".ljust(disks.MiB, b"\0"))
    qcow2_meda.images.import_files("base", disk=raw)
    vm = qcow2_meda.vms.create(CreateVMRequest(name="guest", image="base", disk="1G"))
    # The guest writes a qcow2 header naming the host file at the start of its disk.
    header = guest_written(tmp_path / "header.raw", host_secret)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -s {header} 0 {disks.MiB}", str(vm.disk_path)],
        check=True,
        capture_output=True,
    )
    image = qcow2_meda.images.create_from_vm("guest", "made", "v1", None, None)
    assert image.disk is not None and image.disk_format == "qcow2"
    content = disks.virtual_content(image.disk, "qcow2")
    assert content[:4] == b"QFI\xfb"  # the guest's bytes, kept as data
    assert host_secret.read_bytes() not in content
    assert diskprobe.check_standalone(image.disk) == "qcow2"
    # Exported raw and brought back, the guest's header is refused, not followed.
    exported = tmp_path / "exported.raw"
    exported.write_bytes(content)
    with pytest.raises(UnsafeDisk):
        qcow2_meda.images.import_files("exported", disk=exported)
