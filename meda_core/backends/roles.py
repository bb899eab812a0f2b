"""The typed interfaces of the five backend roles; core code calls backends only through these."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol

from meda_core.errors import BackendUnavailable, Conflict
from meda_core.inputs.references import Reference
from meda_core.models import VM, ForwardListener, PortForward, RuntimeInfo, VMSpec
from meda_core.settings import Settings
from meda_core.state.operations import Progress
from meda_core.state.store import Lease

#: The devices meda gives a guest, numbered: a snapshot restores only into the layout it
#: was saved with. 2: the cloud-init seed is a CD-ROM (it was a virtio disk). 3: the
#: guest agent's channel (a virtio-serial port, or a vsock device).
DEVICE_LAYOUT = 3
#: The name of the virtio-serial port a guest's agent answers on (QEMU).
AGENT_PORT_NAME = "org.meda.agent.0"
#: The vsock port a guest's agent listens on where the channel is vsock (cloud-hypervisor).
AGENT_VSOCK_PORT = 1024


class Role(StrEnum):
    HYPERVISOR = "hypervisor"
    NETWORK = "network"
    STORAGE = "storage"
    REGISTRY = "registry"
    AGENT = "agent"


class Capability(StrEnum):
    """What a backend can do beyond its role's minimum; the core asks by member, never by
    a backend's name. The values are the words stored and shown."""

    # Hypervisor
    DIRECT_KERNEL_BOOT = "direct-kernel-boot"  #: boots a kernel and initrd given apart
    FIRMWARE_BOOT = "firmware-boot"  #: boots a whole disk through firmware
    TAP = "tap"  #: attaches NICs of kind tap
    USER_NET = "user-net"  #: makes NICs of kind user (its own user-mode network)
    SNAPSHOT = "snapshot"  #: save_state, resume and restore_state work
    DISK_SWITCH = "disk-switch"  #: switch_disk moves a paused VM to an overlay
    #: Hypervisor: add_hostfwd/remove_hostfwd work. Network: the hypervisor forwards the
    #: ports (the forwards go into the NicSpec), not the host.
    HOSTFWD = "hostfwd"
    # Storage
    COPY_ON_WRITE = "copy-on-write"  #: a disk over a base records the base, not a copy
    RESIZE = "resize"  #: a disk may be larger than its base
    REFLINK = "reflink"  #: copies share blocks where the file system can
    # Network
    DHCP = "dhcp"  #: every VM gets an address of its own, served by DHCP
    NAT = "nat"  #: guests reach outside through NAT
    PORT_FORWARD = "port-forward"  #: host ports are forwarded by the host (apply_forwards)
    ISOLATED = "isolated"  #: allocate(isolated=True) gives a VM a network of its own
    ROOTLESS = "rootless"  #: works without root
    # Registry
    RESUME = "resume"  #: an interrupted pull resumes where it stopped
    VERIFY = "verify"  #: every blob is checked against its digest
    ZSTD_CHUNKS = "zstd-chunks"  #: disks travel as zstd-compressed chunks
    READ_RUST_MEDA = "read-rust-meda"  #: pulls images pushed by the Rust meda
    # Agent
    EXEC_STREAM = "exec-stream"  #: a command's output arrives while it runs
    STDIN = "stdin"  #: a running command reads what the client sends it
    FILES = "files"  #: read_file and write_file work
    IDENTITY = "identity"  #: set_identity gives a guest a new hostname, machine-id, host keys


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


class LeaseBook(Protocol):
    """The address leases meda keeps for network backends, one network at a time.

    A lease ties a VM to an address and a MAC on a network (named by its backend, say
    its bridge) and outlives meda's restarts. Each change is atomic: two VMs never get
    one address, and no two leases, of any network, share a MAC.
    """

    def allocate(
        self, network: str, vm: str, candidates: Iterable[str], new_mac: Callable[[], str]
    ) -> Lease:
        """``vm``'s lease on ``network``, or a new one on the first free candidate
        address with a MAC from ``new_mac``; :class:`Conflict` when none is free."""
        ...

    def find(self, network: str, vm: str) -> Lease | None:
        """``vm``'s lease on ``network``, if it has one."""
        ...

    def release(self, network: str, vm: str) -> None:
        """Give ``vm``'s lease on ``network`` back; no error if it has none."""
        ...

    def all(self, network: str) -> list[Lease]:
        """Every lease on ``network``, by VM name."""
        ...


class VMView(Protocol):
    """What a backend may read of meda's records: VMs and port forwards, never written.

    The records returned are copies: changing one changes nothing that meda keeps.
    """

    def list_vms(self) -> list[VM]:
        """Every VM meda knows, by name."""
        ...

    def get_vm(self, name: str) -> VM | None:
        """The VM named ``name``, if there is one."""
        ...

    def forwards(self) -> list[tuple[str, PortForward]]:
        """Every stored port forward, as ``(vm, forward)``."""
        ...


@dataclass(frozen=True)
class BackendContext:
    """What every backend is constructed with: settings, and narrow views of meda's state
    (a backend never changes a VM's record; only the VM service does)."""

    settings: Settings
    leases: LeaseBook
    vms: VMView

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache_dir


class Backend(ABC):
    """Common shape of a backend: a name, a role, capabilities and an availability check.

    ``capabilities`` are :class:`Capability` members, each documented there.
    """

    role: ClassVar[Role]
    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: Higher wins when the role is configured as ``auto`` and several are available.
    priority: ClassVar[int] = 0

    def __init__(self, context: BackendContext) -> None:
        self.context = context

    @abstractmethod
    def check_available(self) -> Availability:
        """Say whether this backend can work on this host, and what is missing if not."""


class NicKind(StrEnum):
    """How a hypervisor makes a guest NIC."""

    TAP = "tap"  #: attach to an existing tap device (``NicSpec.tap``)
    USER = "user"  #: the hypervisor's own user-mode network


@dataclass(frozen=True)
class NicSpec:
    """A guest NIC as the hypervisor must create it."""

    kind: NicKind
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

    def agent_channel(self, runtime: RuntimeInfo, vm_dir: Path) -> AgentChannel | None:
        """Where the running VM's guest agent answers; None if this hypervisor gives
        guests no agent channel."""
        return None

    def exit_status(self, runtime: RuntimeInfo) -> int | None:
        """How the VM process ``runtime`` names ended, once it has: 0 when the guest powered
        off, anything else a failure (a signal as its negative number); None (the default)
        when this process cannot know (it did not start it). Restart policies read it."""
        return None

    def watched_process(self, runtime: RuntimeInfo) -> RuntimeInfo | None:
        """The process whose exit means the VM ``runtime`` names may have stopped: a server
        watches it and reconciles the VM as soon as it exits. None (the default): the VM is
        checked with :meth:`is_running` at MEDA_RECONCILE_INTERVAL only."""
        return None

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
        """The file name of a disk this backend makes, in a VM's folder or an image's;
        it starts with ``disk.`` (the VM's other files have other names)."""
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


@dataclass(frozen=True)
class GuestAddressing:
    """How a guest sets up its NIC at boot (the seed's network-config): DHCP, or a static
    address with its default route and DNS servers."""

    #: ``ip/prefix``; None: the guest asks DHCP.
    address: str | None = None
    gateway: str | None = None
    nameservers: tuple[str, ...] = ()

    @classmethod
    def dhcp(cls) -> GuestAddressing:
        return cls()

    @classmethod
    def static(
        cls, address: str, gateway: str | None = None, nameservers: tuple[str, ...] = ()
    ) -> GuestAddressing:
        return cls(address, gateway, nameservers)


class NetworkBackend(Backend):
    """Gives VMs their NICs, addresses and port forwards, and takes them all away again.

    Capabilities: ``hostfwd`` (the hypervisor forwards ports: the forwards go into
    :class:`NicSpec`; without it the backend applies them on the host), ``port-forward``,
    ``dhcp``, ``nat``, ``isolated``, ``rootless`` (see :class:`Capability`).

    Besides the abstract methods, a backend answers what the core must not guess: how
    the guest is addressed (:meth:`guest_addressing`), where a guest port is reached
    (:meth:`guest_endpoint`) and what its NIC is (:meth:`nic`). The defaults fit a
    backend that gives each guest a reachable address and a tap device.
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

    def nic(self, attachment: NetworkAttachment) -> NicSpec:
        """The NIC :meth:`plug` gives for ``attachment``, without touching the host (the
        dry run shows it). Default: its tap device if it has one, else user-mode."""
        kind = NicKind.TAP if attachment.tap else NicKind.USER
        return NicSpec(kind=kind, mac=attachment.mac, tap=attachment.tap, netns=attachment.netns)

    def guest_addressing(self, attachment: NetworkAttachment) -> GuestAddressing | None:
        """How the guest configures its NIC (written into its seed). Default: DHCP.

        None: the seed says nothing of the network (the guest keeps its own defaults).
        """
        return GuestAddressing.dhcp()

    def guest_endpoint(
        self, vm: str, attachment: NetworkAttachment, forwards: Sequence[PortForward], port: int
    ) -> tuple[str, int]:
        """Host and port where the running guest's TCP ``port`` answers from the namespace
        meda runs in (``meda ssh``). Default: the guest's own address."""
        if attachment.ip is None:
            raise Conflict(f"VM '{vm}' has no address", name=vm)
        return attachment.ip, port


@dataclass(frozen=True)
class ImageFiles:
    """An image's files and metadata as they travel to or from a registry."""

    disk: Path | None = None
    disk_format: str | None = None
    #: ``sha256:...`` of the disk file as pulled, when the backend hashed it while writing
    #: it (None: meda hashes the file itself).
    disk_digest: str | None = None
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


@dataclass(frozen=True)
class AgentChannel:
    """Where the host reaches the agent in one running guest: a unix socket its
    hypervisor made (``HypervisorBackend.agent_channel``)."""

    socket: Path
    #: None: the socket is the agent's port itself (QEMU's virtio-serial port, one
    #: connection at a time). A number: the socket is a hybrid vsock (cloud-hypervisor);
    #: a connection says ``CONNECT <port>\n`` and reads ``OK ...\n`` first.
    vsock_port: int | None = None


@dataclass(frozen=True)
class ExecCommand:
    """A command to run in a guest: no shell, no TTY."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None


class ExecStream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class ExecOutput:
    """Bytes a running command wrote, in the order it wrote them per stream."""

    stream: ExecStream
    data: bytes


@dataclass(frozen=True)
class ExecExit:
    """How the command ended: its exit code, or the signal that ended it."""

    code: int | None
    signal: int | None = None


class AgentSession(ABC):
    """One running command in a guest. Iterate :meth:`events` to the end (an
    :class:`ExecExit` is last); :meth:`close` always, also on an error."""

    @abstractmethod
    def events(self, timeout: float | None = None) -> Iterator[ExecOutput | ExecExit]:
        """Output as it comes, then the exit. TimeoutError when nothing arrives for
        ``timeout`` seconds (the command runs on); BackendError if the guest goes away."""

    @abstractmethod
    def send_stdin(self, data: bytes) -> None:
        """Give the command more input (capability ``stdin``)."""

    @abstractmethod
    def close_stdin(self) -> None:
        """End the command's input: it reads end-of-file."""

    @abstractmethod
    def kill(self) -> None:
        """End the command (SIGKILL to its process group); :meth:`events` ends with it."""

    @abstractmethod
    def close(self) -> None:
        """Forget the session; a command still running is killed."""


class AgentBackend(Backend):
    """Talks to the software inside a guest over the channel its hypervisor gives.

    The host treats everything the agent sends as hostile: sizes are capped, frames
    checked, and a guest that stops answering costs a timeout, never a hang.
    """

    role = Role.AGENT

    @abstractmethod
    def ping(self, channel: AgentChannel, timeout: float) -> bool:
        """True once the agent answers on ``channel``; False if it did not in ``timeout``."""

    @abstractmethod
    def exec(self, channel: AgentChannel, command: ExecCommand) -> AgentSession:
        """Start ``command`` in the guest. BackendError if the agent refuses it (no such
        program: the exit code is 127 instead, as a shell's)."""

    def read_file(self, channel: AgentChannel, path: str) -> Iterator[bytes]:
        """The bytes of the guest file ``path``, in chunks (capability ``files``).
        NotFound if it does not exist; InvalidRequest if it is not a regular file."""
        raise BackendUnavailable(f"the {self.name} agent cannot read files")

    def write_file(
        self,
        channel: AgentChannel,
        path: str,
        chunks: Iterable[bytes],
        mode: int = 0o644,
        owner: tuple[int, int] | None = None,
    ) -> int:
        """Write ``chunks`` to the guest file ``path`` (replaced whole: written beside it,
        then renamed); returns the bytes written (capability ``files``)."""
        raise BackendUnavailable(f"the {self.name} agent cannot write files")

    def set_identity(self, channel: AgentChannel, hostname: str) -> None:
        """Make the guest a machine of its own: ``hostname``, a new machine-id and new
        SSH host keys where it has them (capability ``identity``)."""
        raise BackendUnavailable(f"the {self.name} agent cannot set a guest's identity")

    def guest_program(self) -> Path | None:
        """A static x86_64 executable that serves this agent when run in a guest (it
        finds its channel itself), built or found on this host; None if it ships none.
        Image builders install it and start it at boot."""
        return None


ROLE_BASES: dict[Role, type[Backend]] = {
    Role.HYPERVISOR: HypervisorBackend,
    Role.NETWORK: NetworkBackend,
    Role.STORAGE: StorageBackend,
    Role.REGISTRY: RegistryBackend,
    Role.AGENT: AgentBackend,
}
