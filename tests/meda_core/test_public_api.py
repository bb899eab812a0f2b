"""meda_core's public API is explicit: a change to it is a decision, not an accident."""

from __future__ import annotations

import meda_core

PUBLIC = [
    "Availability",
    "Backend",
    "BackendContext",
    "BackendError",
    "BackendRegistry",
    "BackendUnavailable",
    "CloneRequest",
    "Conflict",
    "CreateVMRequest",
    "DiskInfo",
    "HypervisorBackend",
    "Image",
    "ImageExists",
    "ImageFiles",
    "ImageNotFound",
    "InvalidRequest",
    "InvalidState",
    "LaunchSpec",
    "LocalApi",
    "Meda",
    "MedaApi",
    "MedaError",
    "NetworkAttachment",
    "NetworkBackend",
    "NicSpec",
    "NotFound",
    "PayloadTooLarge",
    "PortForward",
    "Protocol",
    "RegistryBackend",
    "RemoteApi",
    "Role",
    "RunRequest",
    "RuntimeInfo",
    "Settings",
    "Snapshot",
    "StorageBackend",
    "Unauthorized",
    "VM",
    "VMEvent",
    "VMEventKind",
    "VMExists",
    "VMNotFound",
    "VMSpec",
    "VMState",
    "__version__",
    "hookimpl",
]


def test_the_public_api_is_what_it_was() -> None:
    assert sorted(meda_core.__all__) == sorted(PUBLIC), (
        "meda_core.__all__ changed: update this list (and the docs) if that was meant"
    )


def test_every_public_name_resolves() -> None:
    for name in meda_core.__all__:
        assert getattr(meda_core, name) is not None
