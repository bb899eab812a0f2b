"""meda's core: models, errors, plugin system, state and the VM service (no web, no CLI).

The public API is what ``__all__`` names; everything else may change between releases.

    from meda_core import Meda, CreateVMRequest
    meda = Meda()
    meda.vms.create(CreateVMRequest(name="demo"))
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import Any

try:
    __version__ = metadata.version("meda")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

from meda_core.backends.hookspecs import hookimpl

#: Public name → the module that defines it (imported on first use: ``import meda_core``
#: stays cheap, and modules that import ``hookimpl`` from here never go in a circle).
_PUBLIC = {
    "Meda": "facade",
    "Settings": "settings",
    "BackendRegistry": "backends.catalogue",
    "LocalApi": "interface.calls",
    "MedaApi": "interface.calls",
    "RemoteApi": "interface.remote",
    "VMEvent": "state.events",
    "VMEventKind": "state.events",
    **dict.fromkeys(
        (
            "Backend",
            "BackendContext",
            "Availability",
            "HypervisorBackend",
            "StorageBackend",
            "NetworkBackend",
            "RegistryBackend",
            "LaunchSpec",
            "NicSpec",
            "NetworkAttachment",
            "DiskInfo",
            "ImageFiles",
            "Role",
        ),
        "backends.roles",
    ),
    **dict.fromkeys(
        (
            "MedaError",
            "InvalidRequest",
            "PayloadTooLarge",
            "Unauthorized",
            "NotFound",
            "VMNotFound",
            "ImageNotFound",
            "Conflict",
            "VMExists",
            "ImageExists",
            "InvalidState",
            "BackendUnavailable",
            "BackendError",
        ),
        "errors",
    ),
    **dict.fromkeys(
        (
            "VM",
            "VMState",
            "VMSpec",
            "Image",
            "CreateVMRequest",
            "RunRequest",
            "CloneRequest",
            "PortForward",
            "Protocol",
            "RuntimeInfo",
            "Snapshot",
        ),
        "models",
    ),
}

__all__ = ["__version__", "hookimpl", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f"meda_core.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'meda_core' has no attribute {name!r}")
