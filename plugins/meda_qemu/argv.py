"""The ``qemu-system-x86_64`` command line for one VM."""

from __future__ import annotations

from pathlib import Path

from meda_core.backends import LaunchSpec

DEFAULT_CMDLINE = "console=ttyS0"


def runtime_paths(vm_dir: Path) -> tuple[Path, Path]:
    """The QMP socket and pid file of a VM."""
    return vm_dir / "qmp.sock", vm_dir / "qemu.pid"


def build_argv(
    binary: str,
    launch: LaunchSpec,
    accel: str,
    machine: str,
    firmware: Path | None,
) -> list[str]:
    qmp_socket, pidfile = runtime_paths(launch.vm_dir)
    memory_mib = launch.spec.memory_bytes // (1024 * 1024)
    argv = [
        binary,
        "-name", f"meda-{launch.name},process=meda-{launch.name}",
        "-uuid", launch.uuid,
        "-machine", machine,
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", f"{memory_mib}M",
        "-smp", str(launch.spec.cpus),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-daemonize", "-pidfile", str(pidfile),
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-chardev", f"file,id=console,path={launch.console_log}",
        "-serial", "chardev:console",
        "-drive", f"file={launch.disk},if=none,id=disk0,format=qcow2",
        "-device", "virtio-blk-pci,drive=disk0",
    ]  # fmt: skip
    for index, extra in enumerate(launch.extra_disks, start=1):
        argv += [
            "-drive", f"file={extra},if=none,id=disk{index},format=raw,readonly=on",
            "-device", f"virtio-blk-pci,drive=disk{index}",
        ]  # fmt: skip
    if launch.kernel is not None:
        argv += ["-kernel", str(launch.kernel)]
        if launch.initrd is not None:
            argv += ["-initrd", str(launch.initrd)]
        argv += ["-append", launch.cmdline or DEFAULT_CMDLINE]
    elif firmware is not None:
        argv += ["-bios", str(firmware)]
    return argv
