"""The ``qemu-system-x86_64`` command line for one VM."""

from __future__ import annotations

import shlex
from pathlib import Path

from meda_core import netns
from meda_core.backends import LaunchSpec, NicSpec
from meda_core.errors import BackendError
from meda_core.models import PortForward

DEFAULT_CMDLINE = "console=ttyS0"


def runtime_paths(vm_dir: Path) -> tuple[Path, Path]:
    """The QMP socket and pid file of a VM."""
    return vm_dir / "qmp.sock", vm_dir / "qemu.pid"


def hostfwd_rule(forward: PortForward) -> str:
    """QEMU's ``hostfwd`` syntax: ``tcp::8080-:80``."""
    return f"{forward.protocol.value}::{forward.host_port}-:{forward.guest_port}"


def nic_args(nics: tuple[NicSpec, ...]) -> list[str]:
    args: list[str] = []
    for index, nic in enumerate(nics):
        netdev = f"net{index}"
        if nic.kind == "tap":
            # Never vhost=on: vhost-net is not everywhere and QEMU asserts instead of failing.
            backend = f"tap,id={netdev},ifname={nic.tap},script=no,downscript=no"
        elif nic.kind == "user":
            # restrict=on: slirp maps the host's loopback at 10.0.2.2 and connects anywhere
            # for the guest; restricted, the guest reaches nothing but its hostfwd forwards.
            backend = f"user,id={netdev},restrict=on" + "".join(
                f",hostfwd={hostfwd_rule(f)}" for f in nic.hostfwds
            )
        else:
            raise BackendError(f"qemu cannot make a NIC of kind '{nic.kind}'")
        args += ["-netdev", backend, "-device", f"virtio-net-pci,netdev={netdev},mac={nic.mac}"]
    return args


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
        *netns.exec_prefix(launch.netns),
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
    argv += nic_args(launch.nics)
    if launch.restore_state is not None:
        # QEMU 7.2 has no file: migration URI; exec: runs through /bin/sh, hence the quoting.
        argv += ["-incoming", f"exec:cat {shlex.quote(str(launch.restore_state))}"]
    if launch.kernel is not None:
        argv += ["-kernel", str(launch.kernel)]
        if launch.initrd is not None:
            argv += ["-initrd", str(launch.initrd)]
        argv += ["-append", launch.cmdline or DEFAULT_CMDLINE]
    elif firmware is not None:
        argv += ["-bios", str(firmware)]
    return argv
