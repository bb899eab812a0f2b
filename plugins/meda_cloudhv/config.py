"""The command line and the VmConfig of a VM under cloud-hypervisor."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from meda_core.plugin import BackendError, InvalidRequest, LaunchSpec
from meda_core.plugin import namespaces as netns

SOCKET = "ch.sock"
RESTORE_SOURCE = "restore-source"
PIDFILE = "ch.pid"
LOG = "ch.log"
#: The host end of the guest's vsock device: cloud-hypervisor's hybrid vsock, a unix
#: socket where a connection says ``CONNECT <port>`` to reach the guest's vsock ``port``.
VSOCK_SOCKET = "vsock.sock"
#: Guest context ids 0-2 are reserved (hypervisor, local, host), and 2**32-1 means any.
FIRST_CID = 3
CID_SPAN = (1 << 32) - 1 - FIRST_CID


def option_value(value: str) -> str:
    """``value`` inside a cloud-hypervisor option string: quoted if it holds a comma.

    Its parser has no escape: a '"' or a bracket (it counts them even inside quotes)
    cannot be carried, nor spaces at either end (it trims them).
    """
    if any(c in value for c in '"[]') or value != value.strip():
        raise BackendError(
            f"cloud-hypervisor cannot be given the path {value!r} (it holds '\"', '[' or "
            "']', or starts or ends with a space): choose a MEDA_HOME without them",
            path=value,
        )
    return f'"{value}"' if "," in value else value


def socket_option(value: str) -> str | None:
    """The socket path in an ``--api-socket`` argument as :func:`argv` writes it."""
    if not value.startswith("path="):
        return None
    return value.removeprefix("path=").removeprefix('"').removesuffix('"')


#: cloud-hypervisor's ImageType for each disk format meda may hand it.
IMAGE_TYPES = {"raw": "Raw", "qcow2": "Qcow2"}


def image_type(disk_format: str) -> dict[str, Any]:
    """The DiskConfig fields that make cloud-hypervisor open a disk as ``disk_format``
    (never by probing its bytes); a qcow2 disk may rest on a backing file."""
    found = IMAGE_TYPES.get(disk_format)
    if found is None:
        raise BackendError(
            f"cloud-hypervisor cannot open a {disk_format} disk (it opens "
            f"{', '.join(sorted(IMAGE_TYPES))}): choose another storage backend",
            disk_format=disk_format,
        )
    return {"image_type": found, **({"backing_files": True} if found == "Qcow2" else {})}


def argv(binary: str, launch: LaunchSpec) -> list[str]:
    """The VMM process: only its API socket and logs; the VM comes through vm.create."""
    return [
        *netns.exec_prefix(launch.netns),
        binary,
        "--api-socket",
        f"path={option_value(str(launch.vm_dir / SOCKET))}",
        "--log-file",
        str(launch.vm_dir / LOG),
    ]


def guest_cid(vm_uuid: str) -> int:
    """The VM's vsock context id, drawn from its uuid: its own among the VMs meda runs (a
    hybrid vsock routes by socket, not by id, so a rare clash would only be cosmetic)."""
    return FIRST_CID + uuid.UUID(vm_uuid).int % CID_SPAN


def vsock_config(launch: LaunchSpec) -> dict[str, Any]:
    """The VmConfig's ``vsock``: where the guest agent answers (``AGENT_VSOCK_PORT``)."""
    return {"cid": guest_cid(launch.uuid), "socket": str(launch.vm_dir / VSOCK_SOCKET)}


def vm_config(launch: LaunchSpec, firmware: Path | None) -> dict[str, Any]:
    """The VmConfig body of ``vm.create``."""
    if launch.kernel is not None:
        payload: dict[str, Any] = {"kernel": str(launch.kernel)}
        if launch.initrd is not None:
            payload["initramfs"] = str(launch.initrd)
        payload["cmdline"] = launch.cmdline or "console=ttyS0"
    elif firmware is not None:
        payload = {"firmware": str(firmware)}
    else:
        raise InvalidRequest(
            "cloud-hypervisor needs a kernel in the image, or firmware (MEDA_CH_FIRMWARE) "
            "to boot its disk"
        )
    disks = [{"path": str(launch.disk), **image_type(launch.disk_format)}]
    disks += [{"path": str(d), "readonly": True, **image_type("raw")} for d in launch.extra_disks]
    net = []
    for nic in launch.nics:
        if nic.kind != "tap" or nic.tap is None:
            raise BackendError(
                f"cloud-hypervisor cannot make a '{nic.kind}' NIC; use the tap-bridge network"
            )
        # Only tap and mac: cloud-hypervisor applies ip/mask only to taps it makes itself.
        net.append({"tap": nic.tap, "mac": nic.mac})
    config: dict[str, Any] = {
        "payload": payload,
        "cpus": {"boot_vcpus": launch.spec.cpus, "max_vcpus": launch.spec.cpus},
        "memory": {"size": launch.spec.memory_bytes},
        "disks": disks,
        "serial": {"mode": "File", "file": str(launch.console_log)},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
        "vsock": vsock_config(launch),
    }
    if net:
        config["net"] = net
    return config


#: What a restore takes from this launch rather than from the snapshot: the VM's own disk,
#: seed, console and NICs (a clone's are not its template's).
PER_VM = ("disks", "serial", "net", "payload")


def restore_source(snapshot: Path, vm_config: dict[str, Any], vm_dir: Path) -> Path:
    """A directory to restore from: the snapshot's state and memory (linked, not copied),
    with its ``config.json`` pointing at this VM's disk, console and NICs."""
    source = vm_dir / RESTORE_SOURCE
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    for item in snapshot.iterdir():
        if item.name != "config.json":
            (source / item.name).symlink_to(item)
    config = json.loads((snapshot / "config.json").read_text())
    for key in PER_VM:
        if key in vm_config:
            config[key] = vm_config[key]
    if "vsock" in config:  # the saved guest keeps its context id; the socket is this VM's
        config["vsock"] = {**config["vsock"], "socket": vm_config["vsock"]["socket"]}
    (source / "config.json").write_text(json.dumps(config))
    return source
