from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from meda_core.backends import BackendContext, LaunchSpec
from meda_core.models import VMSpec
from meda_core.testing.conformance import HypervisorConformance
from meda_core.testing.guest import (
    DISK_BOOT_MARKER,
    POWEROFF_MARKER,
    BootableGuest,
    boot_sector_disk,
)
from meda_core.testing.pytest_plugin import wait_for_text
from meda_qcow2 import Qcow2Storage
from meda_qemu import QemuHypervisor, accel
from meda_qemu.argv import build_argv


def _launch(vm_dir: Path, guest: BootableGuest | None = None) -> LaunchSpec:
    return LaunchSpec(
        name="t", uuid=str(uuid.uuid4()), vm_dir=vm_dir, spec=VMSpec(memory="512M", cpus=2),
        disk=vm_dir / "disk.qcow2", console_log=vm_dir / "console.log",
        kernel=guest.kernel if guest else None, initrd=guest.initrd if guest else None,
        cmdline=guest.cmdline if guest else None,
    )  # fmt: skip


def test_argv_direct_kernel_boot(tmp_path: Path) -> None:
    launch = _launch(tmp_path)
    launch = LaunchSpec(**{**launch.__dict__, "kernel": Path("/k"), "initrd": Path("/i")})
    argv = build_argv("qemu-system-x86_64", launch, "tcg", "q35", None)
    assert argv[argv.index("-m") + 1] == "512M"
    assert argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-kernel") + 1] == "/k"
    assert argv[argv.index("-append") + 1] == "console=ttyS0"
    assert "-daemonize" in argv and launch.uuid in argv
    assert not any("vhost" in arg for arg in argv)


def test_argv_firmware_boot(tmp_path: Path) -> None:
    argv = build_argv("qemu", _launch(tmp_path), "kvm", "q35", Path("/fw.bin"))
    assert argv[argv.index("-bios") + 1] == "/fw.bin"
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "-kernel" not in argv


def test_accel_choice_is_cached_per_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_boot_test(binary: str, kernel: Path, timeout: float) -> str | None:
        calls.append(kernel)
        return "KVM internal error"

    monkeypatch.setattr(accel, "kvm_device_problem", lambda: None)
    monkeypatch.setattr(accel, "boot_test", fake_boot_test)
    cache = tmp_path / "accel.json"
    first = accel.choose("qemu", Path("/k"), cache, 1)
    second = accel.choose("qemu", Path("/k"), cache, 1)
    assert first == second and first.accel == "tcg" and "internal error" in first.reason
    assert len(calls) == 1
    data = json.loads(cache.read_text())
    data["key"] = "another-boot:qemu"
    cache.write_text(json.dumps(data))
    accel.choose("qemu", Path("/k"), cache, 1)
    assert len(calls) == 2


def test_no_kernel_to_probe_means_tcg_and_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "kvm_device_problem", lambda: None)
    choice = accel.choose("qemu", None, tmp_path / "accel.json", 1)
    assert choice.accel == "tcg" and "not verified" in choice.reason
    assert not (tmp_path / "accel.json").exists()


def test_missing_binary_is_explained(
    backend_context: BackendContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDA_QEMU_BINARY", "qemu-system-nonexistent")
    reason = QemuHypervisor(backend_context).check_available().reason
    assert reason and "not found" in reason and "apt-get install" in reason


@pytest.mark.vm
def test_real_kvm_probe_gives_a_verdict(test_guest: BootableGuest, tmp_path: Path) -> None:
    """On these hosts KVM cannot run a stock kernel: the probe must notice, not assume."""
    choice = accel.choose("qemu-system-x86_64", test_guest.kernel, tmp_path / "a.json", 20)
    assert choice.accel in {"kvm", "tcg"} and choice.reason
    if accel.kvm_device_problem() is None and Path("/sys/module/kvm_pvm").exists():
        assert choice.accel == "tcg", choice.reason


@pytest.mark.vm
class TestQemuConformance(HypervisorConformance):
    @pytest.fixture
    def stop_timeout(self) -> float:
        return 3.0  # most of these tests stop a guest before it boots: go on to `quit` soon

    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> QemuHypervisor:
        return QemuHypervisor(backend_context)

    @pytest.fixture
    def launch(self, tmp_path: Path, test_guest: BootableGuest, backend_context: BackendContext):  # type: ignore[no-untyped-def]
        storage = Qcow2Storage(backend_context)

        def make(name: str) -> LaunchSpec:
            vm_dir = tmp_path / name
            vm_dir.mkdir()
            launch = _launch(vm_dir, test_guest)
            storage.create_disk(launch.disk, 64 << 20)
            return launch

        return make

    def test_guest_boots_and_powers_off_on_acpi(
        self,
        backend: QemuHypervisor,
        launch,
        test_guest: BootableGuest,  # type: ignore[no-untyped-def]
    ) -> None:
        spec = launch("acpi")
        runtime = backend.start(spec)
        try:
            wait_for_text(spec.console_log, test_guest.marker, timeout=60)
            assert runtime.accelerator in {"kvm", "tcg"}
            backend.stop(runtime, spec.vm_dir, timeout=30)
            assert not backend.is_running(runtime)
            assert POWEROFF_MARKER in spec.console_log.read_text()  # graceful, not killed
        finally:
            backend.stop(runtime, spec.vm_dir, timeout=1)
            backend.cleanup(spec.vm_dir)


@pytest.mark.vm
def test_disk_boots_through_firmware(
    tmp_path: Path, backend_context: BackendContext, test_guest: BootableGuest
) -> None:
    base = boot_sector_disk(tmp_path / "base.raw")
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    launch = _launch(vm_dir)  # no kernel: SeaBIOS boots the disk
    Qcow2Storage(backend_context).create_disk(launch.disk, 64 << 20, base, "raw")
    backend = QemuHypervisor(backend_context)
    runtime = backend.start(launch)
    try:
        wait_for_text(launch.console_log, DISK_BOOT_MARKER, timeout=60)
    finally:
        backend.stop(runtime, vm_dir, timeout=0.5)  # the boot sector ignores ACPI: forced
        backend.cleanup(vm_dir)
    assert not backend.is_running(runtime)
