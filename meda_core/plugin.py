"""Everything a meda plugin may use, in one module: the rest of the core may change.

A backend imports from here and from nothing else in ``meda_core`` (``meda_core.testing``
excepted, for its conformance suites and fixtures)::

    from meda_core.plugin import Availability, StorageBackend, hookimpl

The names fall into five groups: the hook marker and the catalogue plugins register into;
the role base classes and what they receive and return; the models a backend reads; the
errors it raises; and host helpers (processes, namespaces, locks, MACs, hashing, files).
"""

from __future__ import annotations

from meda_core.backends.catalogue import BackendRegistry
from meda_core.backends.hookspecs import hookimpl
from meda_core.backends.roles import (
    AGENT_PORT_NAME,
    AGENT_VSOCK_PORT,
    DEVICE_LAYOUT,
    AgentBackend,
    AgentChannel,
    AgentSession,
    Availability,
    Backend,
    BackendContext,
    Capability,
    DiskInfo,
    ExecCommand,
    ExecExit,
    ExecOutput,
    ExecStream,
    GuestAddressing,
    HypervisorBackend,
    ImageFiles,
    LaunchSpec,
    LeaseBook,
    NetworkAttachment,
    NetworkBackend,
    NicKind,
    NicSpec,
    RegistryBackend,
    Role,
    StorageBackend,
    VMView,
)
from meda_core.errors import (
    BackendError,
    BackendUnavailable,
    Conflict,
    InvalidRequest,
    MedaError,
    NotFound,
)
from meda_core.host import namespaces, processes
from meda_core.host.files import atomic_file
from meda_core.host.locks import exclusive
from meda_core.host.private import DIR_MODE, UMASK, create_private
from meda_core.images import diskprobe
from meda_core.images.blobs import sha256_file
from meda_core.inputs import content
from meda_core.inputs.references import Reference, is_loopback
from meda_core.models import VM, ForwardListener, PortForward, RuntimeInfo, VMSpec, VMState
from meda_core.network.macs import random_mac
from meda_core.settings import Settings
from meda_core.state.events import VMEvent, VMEventKind
from meda_core.state.operations import Progress, no_progress
from meda_core.state.store import Lease

__all__ = [
    "AGENT_PORT_NAME",
    "AGENT_VSOCK_PORT",
    "DEVICE_LAYOUT",
    "DIR_MODE",
    "UMASK",
    "VM",
    "AgentBackend",
    "AgentChannel",
    "AgentSession",
    "Availability",
    "Backend",
    "BackendContext",
    "BackendError",
    "BackendRegistry",
    "BackendUnavailable",
    "Capability",
    "Conflict",
    "DiskInfo",
    "ExecCommand",
    "ExecExit",
    "ExecOutput",
    "ExecStream",
    "ForwardListener",
    "GuestAddressing",
    "HypervisorBackend",
    "ImageFiles",
    "InvalidRequest",
    "LaunchSpec",
    "Lease",
    "LeaseBook",
    "MedaError",
    "NetworkAttachment",
    "NetworkBackend",
    "NicKind",
    "NicSpec",
    "NotFound",
    "PortForward",
    "Progress",
    "Reference",
    "RegistryBackend",
    "Role",
    "RuntimeInfo",
    "Settings",
    "StorageBackend",
    "VMEvent",
    "VMEventKind",
    "VMSpec",
    "VMState",
    "VMView",
    "atomic_file",
    "content",
    "create_private",
    "diskprobe",
    "exclusive",
    "hookimpl",
    "is_loopback",
    "namespaces",
    "no_progress",
    "processes",
    "random_mac",
    "sha256_file",
]
