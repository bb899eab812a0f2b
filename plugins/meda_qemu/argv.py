"""The ``qemu-system-x86_64`` command line for one VM."""

from __future__ import annotations

from pathlib import Path

from meda_core.plugin import (
    AGENT_PORT_NAME,
    BackendError,
    LaunchSpec,
    NicSpec,
    PortForward,
    diskprobe,
)
from meda_core.plugin import namespaces as netns

DEFAULT_CMDLINE = "console=ttyS0"
#: seccomp: no obsolete or privilege-raising calls, no fork/exec, no scheduler or CPU
#: affinity changes. No fork/exec is why QEMU neither daemonizes (setsid) nor migrates
#: through ``exec:`` (a shell): meda hands it open files instead.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
#: With ``-runas`` QEMU calls setuid() itself after the filter is in: it must allow it
#: (measured: QEMU 7.2 dies of SIGSYS otherwise). Once it is that user it cannot go back.
SANDBOX_RUNAS = SANDBOX.replace("elevateprivileges=deny", "elevateprivileges=allow")
#: A restored VM reads its saved state from stdin: meda opens the file (``-incoming fd:0``).
INCOMING = "fd:0"
#: The VM's disk reaches QEMU as a file meda opened, in this fd set, never by its path:
#: by the time QEMU would reopen it, the path names another file (a snapshot renamed the
#: disk) or one QEMU, run as another user, cannot open. ``auto-read-only=off`` keeps it
#: from reopening the disk read-only when a migration ends (a snapshot's save).
DISK_FDSET = 1
DISK_FILE_OPTIONS = "file.auto-read-only=off"
#: Extra disks (the cloud-init seed) are CD-ROMs on a virtio-scsi controller: a medium
#: can be ejected and closed again, which the guest sees as a media change. A clone
#: restored from its template's memory learns that way that its seed (its hostname) is
#: its own (meda_core.vms.seed).
SEED_CONTROLLER = "seeds"
#: The guest agent's channel: a virtio-serial port named :data:`AGENT_PORT_NAME` on a
#: controller of its own, whose host end is a unix socket QEMU listens on in the VM's
#: folder (made under meda's umask 077, in a 0700 folder: root's alone, even with -runas,
#: since QEMU makes it before it drops to its user).
AGENT_CONTROLLER = "agentbus"
AGENT_CHARDEV = "agentchr"


def opt(value: object) -> str:
    """``value`` inside a QEMU option string: a ',' there is written ',,'."""
    return str(value).replace(",", ",,")


def path_opt(path: Path) -> str:
    """An absolute ``path`` inside an option string (never read as ``protocol:...``)."""
    return opt(path.absolute())


def runtime_paths(vm_dir: Path) -> tuple[Path, Path]:
    """The QMP socket and pid file of a VM."""
    return vm_dir / "qmp.sock", vm_dir / "qemu.pid"


def agent_socket(vm_dir: Path) -> Path:
    """The host end of the guest agent's virtio-serial port."""
    return vm_dir / "agent.sock"


def log_path(vm_dir: Path) -> Path:
    """What QEMU prints (its errors), kept for the last start."""
    return vm_dir / "qemu.log"


def hostfwd_rule(forward: PortForward) -> str:
    """QEMU's ``hostfwd`` syntax: ``tcp::8080-:80``."""
    return f"{forward.protocol.value}::{forward.host_port}-:{forward.guest_port}"


def cdrom_id(index: int) -> str:
    """The QEMU device id of the ``index``-th extra disk (from 1), a CD-ROM."""
    return f"cd{index}"


def extra_disk_args(extra_disks: tuple[Path, ...]) -> list[str]:
    args = ["-device", f"virtio-scsi-pci,id={SEED_CONTROLLER}"] if extra_disks else []
    for index, extra in enumerate(extra_disks, start=1):
        drive = f"file={path_opt(extra)},if=none,id=disk{index},format=raw,readonly=on"
        device = f"scsi-cd,drive=disk{index},id={cdrom_id(index)},bus={SEED_CONTROLLER}.0"
        args += ["-drive", f"{drive},media=cdrom", "-device", device]
    return args


def agent_args(vm_dir: Path) -> list[str]:
    """The agent's port: a server socket that accepts one host connection at a time (QEMU
    listens again once it closes) and never waits for one before the guest runs. Like the
    QMP socket, its path must fit AF_UNIX's 108 bytes: QEMU refuses to start otherwise."""
    chardev = f"socket,id={AGENT_CHARDEV},path={path_opt(agent_socket(vm_dir))},server=on,wait=off"
    port = f"virtserialport,bus={AGENT_CONTROLLER}.0,chardev={AGENT_CHARDEV},name={AGENT_PORT_NAME}"
    return [
        "-device",
        f"virtio-serial-pci,id={AGENT_CONTROLLER}",
        "-chardev",
        chardev,
        "-device",
        port,
    ]


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


def disk_args(launch: LaunchSpec, disk_fds: tuple[int, ...]) -> list[str]:
    """The VM's own disk, opened as the format its storage made it in: from the fd set
    when meda passes it open (``disk_fds``), else by its path."""
    if launch.disk_format not in diskprobe.FORMATS:  # no vvfat, vmdk…: only what meda checks
        raise BackendError(
            f"QEMU opens only {' and '.join(diskprobe.FORMATS)} disks, not "
            f"{launch.disk_format!r} (the VM's storage backend made it)"
        )
    disk = f"/dev/fdset/{DISK_FDSET}" if disk_fds else path_opt(launch.disk)
    drive = f"file={disk},if=none,id=disk0,format={opt(launch.disk_format)},{DISK_FILE_OPTIONS}"
    args = ["-drive", drive, "-device", "virtio-blk-pci,drive=disk0"]
    for fd in disk_fds:
        args += ["-add-fd", f"fd={fd},set={DISK_FDSET}"]
    return args


def boot_args(launch: LaunchSpec, firmware: Path | None) -> list[str]:
    """A direct kernel boot when the image has a kernel, else the firmware given."""
    if launch.kernel is not None:
        args = ["-kernel", str(launch.kernel)]
        if launch.initrd is not None:
            args += ["-initrd", str(launch.initrd)]
        return [*args, "-append", launch.cmdline or DEFAULT_CMDLINE]
    return ["-bios", str(firmware)] if firmware is not None else []


def machine_args(launch: LaunchSpec, accel: str, machine: str) -> list[str]:
    """Name, identity, machine, accelerator, CPU and memory of the VM."""
    name = opt(f"meda-{launch.name}")
    memory_mib = launch.spec.memory_bytes // (1024 * 1024)
    return [
        "-name",
        f"{name},process={name}",
        "-uuid",
        launch.uuid,
        "-machine",
        machine,
        "-accel",
        accel,
        "-cpu",
        "host" if accel == "kvm" else "max",
        "-m",
        f"{memory_mib}M",
        "-smp",
        str(launch.spec.cpus),
    ]


def process_args(launch: LaunchSpec, user: str | None) -> list[str]:
    """The QEMU process itself: no defaults or display, sandboxed, its QMP socket, pid
    file and serial console in the VM's folder. The console is opened for appending: meda
    may copy and truncate it (rotation) while QEMU writes on at the file's new end."""
    qmp_socket, pidfile = runtime_paths(launch.vm_dir)
    return [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-sandbox",
        SANDBOX_RUNAS if user else SANDBOX,
        *(["-runas", user] if user else []),
        "-pidfile",
        str(pidfile),
        "-qmp",
        f"unix:{path_opt(qmp_socket)},server=on,wait=off",
        "-chardev",
        f"file,id=console,path={path_opt(launch.console_log)},append=on",
        "-serial",
        "chardev:console",
    ]


def build_argv(
    binary: str,
    launch: LaunchSpec,
    accel: str,
    machine: str,
    firmware: Path | None,
    user: str | None = None,
    disk_fds: tuple[int, ...] = (),
) -> list[str]:
    """``user``: the account QEMU becomes once it has opened its files (``-runas``);
    ``disk_fds``: the VM's disk, opened read-write by meda and passed to QEMU."""
    return [
        *netns.exec_prefix(launch.netns),
        binary,
        *machine_args(launch, accel, machine),
        *process_args(launch, user),
        *disk_args(launch, disk_fds),
        *extra_disk_args(launch.extra_disks),
        *nic_args(launch.nics),
        *agent_args(launch.vm_dir),
        *(["-incoming", INCOMING] if launch.restore_state is not None else []),
        *boot_args(launch, firmware),
    ]
