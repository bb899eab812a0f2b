"""The typed interfaces of the four backend roles; core code calls backends only through these."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from meda_core.errors import BackendUnavailable
from meda_core.images.references import Reference
from meda_core.models import ForwardListener, PortForward, RuntimeInfo, VMSpec
from meda_core.settings import Settings
from meda_core.state.store import StateStore

#: The devices meda gives a guest, numbered: a snapshot restores only into the layout it
#: was saved with. 2: the cloud-init seed is a CD-ROM (it was a virtio disk).
DEVICE_LAYOUT = 2


class Role(StrEnum):
    HYPERVISOR = "hypervisor"
    NETWORK = "network"
    STORAGE = "storage"
    REGISTRY = "registry"


@dataclass(frozen=True)
class Availability:
    """Whether a backend can work here and, if not, what is missing, in words."""

    ok: bool
    reason: str | None = None

    @classmethod
    def yes(cls) -> Availability:
        return cls(True)

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


@dataclass(frozen=True)
class BackendContext:
    """What every backend is constructed with."""

    settings: Settings
    state: StateStore

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache_dir


class Backend(ABC):
    """Common shape of a backend: a name, a role, capabilities and an availability check."""

    role: ClassVar[Role]
    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: Higher wins when the role is configured as ``auto`` and several are available.
    priority: ClassVar[int] = 0

    def __init__(self, context: BackendContext) -> None:
        self.context = context

    @abstractmethod
    def check_available(self) -> Availability:
        """Say whether this backend can work on this host, and what is missing if not."""


@dataclass(frozen=True)
class NicSpec:
    """A guest NIC as the hypervisor must create it."""

    kind: str  # "tap": attach to an existing tap device; "user": hypervisor user-mode net
    mac: str
    tap: str | None = None
    hostfwds: tuple[PortForward, ...] = ()
    #: The VM's own network namespace, where its hypervisor process must run.
    netns: str | None = None


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a hypervisor needs to start one VM."""

    name: str
    uuid: str
    vm_dir: Path
    spec: VMSpec
    disk: Path
    #: The format ``disk`` is in (its storage backend's ``disk_format``): a hypervisor
    #: opens it as this, never as what the file's bytes may claim.
    disk_format: str
    console_log: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    #: Read-only disks beside the VM's own (the cloud-init seed), all raw images.
    extra_disks: tuple[Path, ...] = field(default_factory=tuple)
    nics: tuple[NicSpec, ...] = ()
    #: Network namespace the VM process must run in (MEDA_NETNS), None for the caller's.
    netns: str | None = None
    #: Resume from this saved device and memory state instead of booting (a restore).
    restore_state: Path | None = None


class HypervisorBackend(Backend):
    """Starts, stops and inspects VM processes that outlive the meda process."""

    role = Role.HYPERVISOR

    @abstractmethod
    def start(self, launch: LaunchSpec) -> RuntimeInfo:
        """Start the VM; return once its process runs. Clean up after itself on failure."""

    @abstractmethod
    def stop(self, runtime: RuntimeInfo, vm_dir: Path, timeout: float) -> None:
        """Ask the guest to power off, wait up to ``timeout``, then force it off (at once,
        without asking, when ``timeout`` is 0)."""

    @abstractmethod
    def is_running(self, runtime: RuntimeInfo) -> bool:
        """True if the VM process ``runtime`` names still runs."""

    @abstractmethod
    def recover(self, vm_dir: Path, uuid: str) -> RuntimeInfo | None:
        """Find the VM process an interrupted start left behind in ``vm_dir``, if any."""

    @abstractmethod
    def cleanup(self, vm_dir: Path) -> None:
        """Remove the runtime files (sockets, pid files) a stopped VM left in ``vm_dir``."""

    def plan(self, launch: LaunchSpec) -> dict[str, Any]:
        """What :meth:`start` would run and send, for an operator to check (dry run)."""
        return {}

    def add_hostfwd(self, runtime: RuntimeInfo, vm_dir: Path, forward: PortForward) -> None:
        """Forward a port into a running VM's user-mode network (capability ``hostfwd``)."""
        raise NotImplementedError(f"{self.name} cannot forward ports itself")

    def remove_hostfwd(self, runtime: RuntimeInfo, vm_dir: Path, forward: PortForward) -> None:
        raise NotImplementedError(f"{self.name} cannot forward ports itself")

    # Snapshots (capability ``snapshot``): save_state and resume make one of a running VM
    # (with ``disk-switch``, switch_disk moves it to an overlay meanwhile; without, meda
    # copies its disk while it is paused); start with ``LaunchSpec.restore_state`` brings
    # it back.

    def save_state(self, runtime: RuntimeInfo, vm_dir: Path, state_file: Path) -> None:
        """Pause the VM and write its device and memory state to ``state_file``."""
        raise BackendUnavailable(f"the {self.name} hypervisor cannot snapshot VMs")

    def switch_disk(self, runtime: RuntimeInfo, vm_dir: Path, overlay: Path) -> None:
        """Make the paused VM write to ``overlay``, a fresh overlay on its current disk."""
        raise BackendUnavailable(f"the {self.name} hypervisor cannot snapshot VMs")

    def resume(self, runtime: RuntimeInfo, vm_dir: Path) -> None:
        """Let a paused VM run again."""
        raise BackendUnavailable(f"the {self.name} hypervisor cannot snapshot VMs")


@dataclass(frozen=True)
class DiskInfo:
    """A disk as its storage backend describes it; ``format`` is a word such as ``raw``
    or ``qcow2`` (``meda_core.images.diskprobe.FORMATS``)."""

    format: str
    virtual_size: int
    actual_size: int
    backing_file: Path | None = None


class StorageBackend(Backend):
    """Turns an image's base disk into a per-VM disk.

    Every disk a backend makes (:meth:`create_disk`, :meth:`create_overlay`,
    :meth:`flatten`) is in its one :attr:`disk_format`, and the :class:`DiskInfo` it
    returns says so. The core names a VM's disk file by :meth:`disk_name` and records it
    with the format when the disk is made; hypervisors receive the format in
    :class:`LaunchSpec` and open the disk as that, so no format is assumed anywhere else.
    """

    role = Role.STORAGE
    #: The format of the disks this backend makes, e.g. ``raw`` or ``qcow2``.
    disk_format: ClassVar[str]

    def disk_name(self) -> str:
        """The file name of a disk this backend makes, in a VM's folder or an image's."""
        return f"disk.{self.disk_format}"

    @abstractmethod
    def create_disk(
        self, dest: Path, size: int, base: Path | None = None, base_format: str | None = None
    ) -> DiskInfo:
        """Create ``dest`` of ``size`` bytes, copy-on-write over ``base`` when given."""

    @abstractmethod
    def delete_disk(self, path: Path) -> None:
        """Remove a disk made by :meth:`create_disk`; no error if it is already gone."""

    @abstractmethod
    def disk_info(self, path: Path) -> DiskInfo:
        """Format, sizes and backing file of a disk."""

    @abstractmethod
    def flatten(self, source: Path, dest: Path) -> DiskInfo:
        """A standalone copy of ``source`` (its backing chain merged) at ``dest``."""

    def create_overlay(self, dest: Path, size: int, base: Path) -> DiskInfo:
        """Like :meth:`create_disk` over ``base``, which a running VM may hold open."""
        return self.create_disk(dest, size, base, self.disk_info(base).format)


@dataclass(frozen=True)
class NetworkAttachment:
    """A VM's place on a network, kept from create to delete."""

    mac: str
    ip: str | None = None
    tap: str | None = None
    subnet: str | None = None
    gateway: str | None = None
    #: The VM's own namespace, for an isolated attachment (capability ``isolated``).
    netns: str | None = None


class NetworkBackend(Backend):
    """Gives VMs their NICs, addresses and port forwards, and takes them all away again.

    A backend with the capability ``hostfwd`` has the hypervisor forward ports (the
    forwards go into :class:`NicSpec`); others apply forwards on the host themselves.
    """

    role = Role.NETWORK

    @abstractmethod
    def allocate(self, vm: str, isolated: bool = False) -> NetworkAttachment:
        """Reserve an address and a MAC for ``vm`` (at create).

        ``isolated``: the VM gets a network of its own with NAT in front of a fixed guest
        address (templates and clones; capability ``isolated``), so clones that restore
        the same guest still get distinct, reachable addresses.
        """

    @abstractmethod
    def release(self, vm: str) -> None:
        """Give back everything ``vm`` holds on the network (at delete); idempotent."""

    @abstractmethod
    def plug(self, vm: str, attachment: NetworkAttachment) -> NicSpec:
        """Prepare the host side of the VM's NIC (before start)."""

    @abstractmethod
    def unplug(self, vm: str, attachment: NetworkAttachment) -> None:
        """Remove the host side of the NIC (after stop); idempotent."""

    @abstractmethod
    def check_host_port(self, forward: PortForward) -> str | None:
        """Why ``forward.host_port`` cannot be used on this host, or None if it can."""

    @abstractmethod
    def forward_listeners(self, forward: PortForward) -> list[ForwardListener]:
        """Where ``forward``'s host port answers: the namespace meda runs in first, if there."""

    @abstractmethod
    def apply_forwards(self) -> None:
        """Make the host's forwarding rules match the stored port forwards."""

    @abstractmethod
    def restore(self) -> None:
        """Re-create what the stored VMs need after a restart (rules, services)."""

    @abstractmethod
    def orphans(self) -> list[str]:
        """Host resources of this backend that no stored VM owns, described."""

    @abstractmethod
    def remove_orphans(self) -> list[str]:
        """Remove what :meth:`orphans` finds; returns what was removed."""


#: Progress of a transfer: (bytes done, bytes in all).
Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """A :data:`Progress` for callers that do not follow the bytes."""


@dataclass(frozen=True)
class ImageFiles:
    """An image's files and metadata as they travel to or from a registry."""

    disk: Path | None = None
    disk_format: str | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    defaults: VMSpec | None = None
    digest: str | None = None  # the manifest's, once pushed or pulled
    #: The guest port that answers once it is ready (None: no readiness signal).
    ready_port: int | None = None


class RegistryBackend(Backend):
    """Moves images to and from registries."""

    role = Role.REGISTRY

    @abstractmethod
    def pull(self, reference: Reference, workdir: Path, progress: Progress) -> ImageFiles:
        """Download and verify ``reference`` into ``workdir``.

        ``workdir`` is the same for the same reference: what an interrupted pull left
        there is resumed. Every file returned has been checked against its digest.
        """

    @abstractmethod
    def push(self, files: ImageFiles, reference: Reference, progress: Progress) -> str:
        """Upload an image; returns its manifest digest."""

    @abstractmethod
    def manifest_digest(self, reference: Reference) -> str | None:
        """The digest ``reference`` has in its registry now, or None if it has none."""


ROLE_BASES: dict[Role, type[Backend]] = {
    Role.HYPERVISOR: HypervisorBackend,
    Role.NETWORK: NetworkBackend,
    Role.STORAGE: StorageBackend,
    Role.REGISTRY: RegistryBackend,
}
