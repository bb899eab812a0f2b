"""Pydantic models shared by the core, the REST API and the CLI's ``--json`` output."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from meda_core.inputs.choices import MAX_EXEC_ARGS_BYTES, MAX_EXEC_TIMEOUT
from meda_core.inputs.choices import Protocol as Protocol  # defined light, for the CLI
from meda_core.inputs.labels import check_labels
from meda_core.inputs.names import VM_NAME_PATTERN, check_vm_name
from meda_core.inputs.sizes import SIZE_PATTERN, at_least, parse_size

#: Request bodies: unknown fields are rejected; their bools and ints are strict too
#: (``"force": 0`` is not ``false``).
REQUEST = ConfigDict(extra="forbid")


class VMState(StrEnum):
    CREATING = "creating"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SNAPSHOTTING = "snapshotting"
    DELETING = "deleting"
    ERROR = "error"


#: States in which no operation is under way and the VM may be started.
STARTABLE = frozenset({VMState.STOPPED, VMState.ERROR})
#: States a crashed operation may leave behind; reconciled when seen.
TRANSITIONAL = frozenset(
    {VMState.CREATING, VMState.STARTING, VMState.STOPPING, VMState.SNAPSHOTTING, VMState.DELETING}
)


# The pattern is published in the schema; the validator checks it with a friendlier message.
_SIZE: dict[str, Any] = {"pattern": SIZE_PATTERN}
MIN_MEMORY = 32 << 20
MIN_DISK = 1 << 20
Memory = Annotated[
    str,
    Field(description="Guest memory, e.g. '512M' or '2G' (at least 32M)", json_schema_extra=_SIZE),
    AfterValidator(at_least(MIN_MEMORY, "memory")),
]
Disk = Annotated[
    str,
    Field(description="Disk size, e.g. '20G' (at least 1M)", json_schema_extra=_SIZE),
    AfterValidator(at_least(MIN_DISK, "disk")),
]
#: A guest port that answers once the guest is ready (22: its SSH server speaks first).
ReadyPort = Annotated[int, Field(ge=1, le=65535)]
#: How requests set an image's ready port: None keeps what the image would get
#: otherwise (its source's), 0 says the image gives no readiness signal.
ReadyPortChoice = Annotated[
    StrictInt | None,
    Field(
        ge=0,
        le=65535,
        description="Guest port that answers once the guest is ready (22: SSH); 0: none "
        "(runs of the image boot cold); unset: the image's or its source's",
    ),
]


def chosen_port(given: int | None, otherwise: int | None) -> int | None:
    """The ready port a request's ``given`` value leaves: see :data:`ReadyPortChoice`."""
    if given is None:
        return otherwise
    return given or None


class VMSpec(BaseModel):
    """The resources a VM asks for."""

    memory: Memory = "1G"
    cpus: int = Field(1, ge=1, le=64, description="Virtual CPUs")
    disk: Disk = "10G"

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_size(self.disk)


#: A VM's labels, ``{key: value}`` (meda_core.inputs.labels says what is valid).
Labels = Annotated[
    dict[str, str],
    Field(description="Labels, {key: value}: at most 32, keys as in [a-z0-9._/-]"),
    AfterValidator(check_labels),
]
#: The longest ``ttl`` a VM may be given or extended by: 30 days.
MAX_TTL = 30 * 24 * 3600


class RestartPolicy(StrEnum):
    """What happens when a running VM's hypervisor ends without meda stopping it."""

    NO = "no"
    ON_FAILURE = "on-failure"  # it ended in failure: a crash, a kill, a hypervisor error
    ALWAYS = "always"  # also when the guest powered itself off


class Lifecycle(BaseModel):
    """A VM's lifecycle policies and what they have done: kept in its record."""

    restart: RestartPolicy = RestartPolicy.NO
    expires: datetime | None = Field(None, description="When the VM is deleted (its ttl)")
    restarts: int = Field(0, description="Times the restart policy has started it again")
    last_restart: datetime | None = None


class TtlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl: StrictInt = Field(ge=1, le=MAX_TTL, description="Seconds from now until the VM is deleted")


class Policies(BaseModel):
    """What create and run take besides the VM itself: labels and lifecycle policies."""

    labels: Labels = Field(default_factory=dict)
    ttl: StrictInt | None = Field(
        None, ge=1, le=MAX_TTL, description="Seconds until the VM is deleted (POST .../ttl extends)"
    )
    restart: RestartPolicy = Field(
        RestartPolicy.NO, description="no, on-failure or always: restarted with backoff"
    )

    def lifecycle(self, now: datetime) -> Lifecycle:
        expires = None if self.ttl is None else now + timedelta(seconds=self.ttl)
        return Lifecycle(restart=self.restart, expires=expires)


class RuntimeInfo(BaseModel):
    """What a hypervisor backend reports about a VM process it started."""

    pid: int
    start_ticks: int = Field(description="Process start time in clock ticks since boot")
    boot_id: str = Field(description="Host boot the process belongs to")
    accelerator: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class Image(BaseModel):
    """An image in the local store: a base disk and/or a kernel for direct boot."""

    name: str
    tag: str = "latest"
    registry: str | None = None
    org: str | None = None
    disk: Path | None = None
    disk_format: str | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    size: int = 0
    created: datetime
    #: Manifest digest in its registry (pulled or pushed images).
    digest: str | None = None
    #: Where it was pulled from, ``host/org/name:tag``.
    source: str | None = None
    defaults: VMSpec | None = None
    #: The guest port that answers once it is ready; None: no signal (runs boot cold).
    ready_port: ReadyPort | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"


class PortForward(BaseModel):
    """A host port forwarded to a guest port."""

    model_config = REQUEST

    host_port: StrictInt = Field(ge=1, le=65535)
    guest_port: StrictInt = Field(ge=1, le=65535)
    protocol: Protocol = Protocol.TCP


class Snapshot(BaseModel):
    """A running VM's device and memory state, paired with its disk as it was then."""

    id: str
    created: datetime
    state_file: Path = Field(description="The saved device and memory state")
    disk: Path = Field(description="The disk frozen at that moment (a base for overlays)")
    state_bytes: int
    seconds: float = Field(description="How long saving took (the guest was paused)")
    #: The devices the guest saw (meda_core.backends.roles.DEVICE_LAYOUT); 1 for older records.
    layout: int = 1


#: A disk's file name: in its VM's folder, never a path out of it.
DISK_FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class VM(BaseModel):
    """A VM as the state store holds it."""

    name: str
    state: VMState
    spec: VMSpec
    image: str
    vm_dir: Path
    hypervisor: str
    storage: str
    #: The VM's disk: its file in ``vm_dir`` and its format, as its storage made it.
    disk_file: str = Field(pattern=DISK_FILE_PATTERN)
    disk_format: str
    created: datetime
    uuid: str
    runtime: RuntimeInfo | None = None
    #: The meda process running a transitional operation (to tell a crash from work under way).
    operation_owner: RuntimeInfo | None = None
    last_error: str | None = None
    network: str | None = Field(None, description="Network backend, None for no NIC")
    user_data: str | None = Field(None, description="cloud-init user data (content)")
    ip: str | None = None
    mac: str | None = None
    tap_device: str | None = None
    subnet: str | None = None
    gateway: str | None = None
    #: The VM's own network namespace (templates and clones: NAT in front of the guest).
    netns: str | None = None
    template: bool = Field(False, description="May be cloned (its network is its own)")
    clone_of: str | None = Field(None, description="The template this VM was cloned from")
    snapshot: Snapshot | None = None
    #: For a template ``run`` made: a fingerprint of the image it was built from.
    image_fingerprint: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    #: Filled in from the forwards table when read; not stored in the VM record.
    port_forwards: list[PortForward] = Field(default_factory=list, exclude=True)

    @property
    def disk_path(self) -> Path:
        return self.vm_dir / self.disk_file

    @property
    def console_log(self) -> Path:
        return self.vm_dir / "console.log"


# ---- REST and --json shapes (the seed's, with extra fields where useful) ----


class CreateVMRequest(Policies):
    model_config = REQUEST

    name: str = Field(pattern=VM_NAME_PATTERN, description="VM name: " + VM_NAME_PATTERN)
    user_data: str | None = Field(
        None,
        description="cloud-init user data: cloud-config or a script, or a path in a "
        "directory the operator allows (MEDA_USER_DATA_DIRS)",
    )
    force: StrictBool = Field(False, description="Replace a VM of the same name")
    template: StrictBool = Field(
        False, description="Make a VM that can be cloned once snapshotted (its own network)"
    )
    memory: Memory = "1G"
    cpus: StrictInt = Field(1, ge=1, le=64)
    disk: Disk = "10G"
    image: str | None = Field(None, description="Image NAME[:TAG]; default MEDA_DEFAULT_IMAGE")

    _name = field_validator("name")(check_vm_name)

    def spec(self) -> VMSpec:
        return VMSpec(memory=self.memory, cpus=self.cpus, disk=self.disk)


class VMSummary(BaseModel):
    name: str
    state: VMState
    ip: str | None
    memory: str
    disk: str
    cpus: int
    image: str
    labels: dict[str, str] = Field(default_factory=dict)


class VMList(BaseModel):
    vms: list[VMSummary]
    count: int


class VMDetails(BaseModel):
    network: str | None
    gateway: str | None
    port_forwards: list[PortForward]
    subnet: str | None
    mac: str | None
    tap_device: str | None
    memory: str
    disk_size: str
    cpus: int
    vm_dir: str
    image: str
    hypervisor: str
    storage: str
    accelerator: str | None
    pid: int | None
    console_log: str
    created: datetime
    last_error: str | None
    launch: dict[str, Any] | None = Field(
        None, description="What the hypervisor ran and sent (command line, VM config)"
    )
    template: bool = False
    clone_of: str | None = None
    snapshot: SnapshotInfo | None = None


class SnapshotInfo(BaseModel):
    id: str
    created: datetime
    state_size: str
    save_seconds: float


class VMInfo(BaseModel):
    name: str
    state: VMState
    ip: str | None
    labels: dict[str, str] = Field(default_factory=dict)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    details: VMDetails


class VMAddress(BaseModel):
    vm: str
    ip: str | None


class ForwardListener(BaseModel):
    """One place where a forward's host port answers."""

    address: str = Field(description="IPv4 address and port it listens on; 0.0.0.0: every one")
    netns: str | None = Field(
        description="The network namespace it listens in; null: the one meda runs in"
    )
    by: str = Field(
        description="What answers there: nftables (a DNAT rule), proxy (a process meda runs) "
        "or qemu (user-mode hostfwd)"
    )


class PortForwardInfo(BaseModel):
    """A forward and where to reach it."""

    host_port: int
    guest_port: int
    protocol: Protocol
    address: str = Field(
        description="Where to connect (host:port), from the namespace ``netns``: "
        "127.0.0.1 when it listens on every address"
    )
    netns: str | None = Field(description="Namespace ``address`` is in; null: meda's own")
    listeners: list[ForwardListener] = Field(description="Everywhere the host port answers")


class PortForwardList(BaseModel):
    vm: str
    forwards: list[PortForwardInfo]
    count: int


class PortForwardResult(BaseModel):
    success: bool
    message: str
    vm: str
    forward: PortForwardInfo


class CleanupReport(BaseModel):
    dry_run: bool
    orphans: list[str]
    count: int
    message: str | None = Field(None, description="Why nothing was looked at, if so")


class OperationResult(BaseModel):
    success: bool
    message: str
    vm: VMInfo | None = None


class ImageInfo(BaseModel):
    name: str
    tag: str
    registry: str | None
    org: str | None = None
    size: str
    created: datetime
    digest: str | None = None
    kernel: bool
    disk: bool
    cmdline: str | None = Field(None, description="Kernel command line of a direct boot")
    used_by: list[str] = Field(default_factory=list)
    ready_port: int | None = Field(
        None, description="Port `run` waits on to build a warm template; null: runs boot cold"
    )


class ImageList(BaseModel):
    images: list[ImageInfo]
    count: int


class PullRequest(BaseModel):
    model_config = REQUEST

    image: str = Field(description="NAME[:TAG] or a full reference host/org/name:tag")
    registry: str | None = None
    org: str | None = None
    ready_port: ReadyPortChoice = None


class PushRequest(BaseModel):
    model_config = REQUEST

    name: str = Field(description="Local image NAME[:TAG]")
    image: str = Field(description="Target: NAME[:TAG] or a full reference")
    registry: str | None = None
    org: str | None = None
    dry_run: StrictBool = False


class CreateImageRequest(BaseModel):
    model_config = REQUEST

    name: str
    tag: str = "latest"
    registry: str | None = None
    org: str | None = None
    from_vm: str
    ready_port: ReadyPortChoice = None


class RunRequest(Policies):
    model_config = REQUEST

    image: str
    name: str = Field(pattern=VM_NAME_PATTERN)
    registry: str | None = None
    org: str | None = None
    user_data: str | None = None
    no_start: StrictBool = False
    cold: StrictBool = Field(
        False, description="Boot from scratch instead of cloning the image's warm template"
    )
    ready_port: ReadyPortChoice = None
    ready_agent: StrictBool = Field(
        False,
        description="The guest is ready once its agent answers (instead of a port): the "
        "warm template of an image without a ready port is built and snapshotted then",
    )
    memory: Memory = "1G"
    cpus: StrictInt = Field(1, ge=1, le=64)
    disk: Disk = "10G"

    _name = field_validator("name")(check_vm_name)

    @model_validator(mode="after")
    def _one_signal(self) -> RunRequest:
        if self.ready_agent and self.ready_port:
            raise ValueError("ready_agent and a ready_port are two readiness signals: give one")
        return self


class RunInfo(BaseModel):
    """How a ``run`` made its VM, and why."""

    path: Literal["warm", "cold"] = Field(
        description="warm: a clone of the image's template; cold: created and booted"
    )
    reason: str
    template: str | None = Field(
        None, description="The template cloned, or the one being built for later runs"
    )
    ready_port: int | None = Field(None, description="The port the template waits on")
    ready_agent: bool = Field(False, description="The template waits for its guest's agent")


class RunResult(BaseModel):
    """The seed's answer to ``run`` (success, message, vm) and how the VM was made."""

    success: bool
    message: str
    vm: VMInfo | None = None
    run: RunInfo


class PruneRequest(BaseModel):
    model_config = REQUEST

    all: StrictBool = False
    force: StrictBool = False


class ImageResult(BaseModel):
    success: bool
    message: str
    image: ImageInfo | None = None
    digest: str | None = None


class PruneResult(BaseModel):
    success: bool
    message: str
    removed_images: list[str]
    removed_blobs: int
    freed: str


class Health(BaseModel):
    status: str
    version: str
    timestamp: datetime


class BackendInfo(BaseModel):
    role: str
    name: str
    plugin: str
    available: bool
    reason: str | None = None
    selected: bool = False


class PluginInfo(BaseModel):
    name: str
    module: str
    distribution: str | None
    version: str | None
    error: str | None = None
    backends: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    hooks: list[str] = Field(default_factory=list, description="Hooks it implements")


class PluginReport(BaseModel):
    plugins: list[PluginInfo]
    backends: list[BackendInfo]


class ErrorBody(BaseModel):
    error: str
    code: str
    details: dict[str, Any]


class CloneRequest(Policies):
    model_config = REQUEST

    name: str = Field(pattern=VM_NAME_PATTERN, description="Name of the new VM")

    _name = field_validator("name")(check_vm_name)


class TemplateInfo(BaseModel):
    name: str
    image: str
    memory: str
    cpus: int
    disk: str
    snapshot: SnapshotInfo | None
    clones: list[str]


class TemplateList(BaseModel):
    templates: list[TemplateInfo]
    count: int


def _no_nul(value: str, what: str) -> str:
    if "\0" in value:
        raise ValueError(f"{what} may not hold a NUL character")
    return value


def check_guest_path(path: str) -> str:
    """A path in a guest: absolute, without NUL, at most 4096 bytes."""
    _no_nul(path, "a guest path")
    if not path.startswith("/"):
        raise ValueError(f"a guest path must be absolute: {path[:200]!r}")
    if len(path.encode()) > 4096:
        raise ValueError("a guest path is at most 4096 bytes")
    return path


class ExecRequest(BaseModel):
    """A command to run in a guest through its agent: no shell, no TTY."""

    model_config = REQUEST

    command: list[str] = Field(
        min_length=1, max_length=4096, description="The program and its arguments (argv)"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Variables added to its environment"
    )
    cwd: str | None = Field(
        None, description="Absolute directory it runs in (the agent's own by default)"
    )
    stdin: str | None = Field(None, description="Text given as its input, then end-of-file")
    timeout: float | None = Field(
        None,
        gt=0,
        le=MAX_EXEC_TIMEOUT,
        description="Seconds before it is killed (default MEDA_EXEC_TIMEOUT for the short form, "
        "none for a stream)",
    )

    @field_validator("command")
    @classmethod
    def _argv(cls, argv: list[str]) -> list[str]:
        for arg in argv:
            _no_nul(arg, "an argument")
        if not argv[0]:
            raise ValueError("the program's name is empty")
        return argv

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            _no_nul(key + value, "an environment variable")
            if not key or "=" in key:
                raise ValueError(f"bad environment variable name {key[:100]!r}")
        return env

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, cwd: str | None) -> str | None:
        return None if cwd is None else check_guest_path(cwd)

    def args_bytes(self) -> int:
        """What argv and env take, as the agent sends them."""
        words = [*self.command, *(f"{k}={v}" for k, v in self.env.items())]
        return sum(len(word.encode()) + 1 for word in words)

    @model_validator(mode="after")
    def _size(self) -> ExecRequest:
        if self.args_bytes() > MAX_EXEC_ARGS_BYTES:
            raise ValueError(f"the command and its environment exceed {MAX_EXEC_ARGS_BYTES} bytes")
        return self


class ExecResult(BaseModel):
    """How a command ended and what it wrote (text; bytes that are not UTF-8 replaced)."""

    exit_code: int | None = Field(description="Its exit status; None when a signal ended it")
    signal: int | None = Field(None, description="The signal that ended it")
    stdout: str
    stderr: str
    truncated: bool = Field(
        False, description="Output went past MEDA_EXEC_OUTPUT_MAX and was cut (per stream)"
    )


class FileResult(BaseModel):
    """A file written into a guest (or a tar unpacked there)."""

    path: str
    size: int = Field(description="Bytes received")
    sha256: str = Field(description="Digest of the bytes received")


class StdinResult(BaseModel):
    """Input handed to a command under way."""

    session: str
    size: int = Field(description="Bytes passed on")
    eof: bool = Field(description="Its input was closed after them")


class JournalEvent(BaseModel):
    """One event of the journal: ``vm`` (a VMEvent) or ``operation`` (an Operation)."""

    id: int = Field(description="Increasing; give the last one seen as ``since`` to go on")
    event: str
    data: dict[str, Any]


class EventPage(BaseModel):
    events: list[JournalEvent]
    count: int
    next: int = Field(description="The ``since`` of the next page (the last id here)")
