"""meda's core: models, errors, plugin system, state and the VM service (no web, no CLI).

The public API is what ``__all__`` names; everything else may change between releases.

    from meda_core import Meda, CreateVMRequest
    meda = Meda()
    meda.vms.create(CreateVMRequest(name="demo"))
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meda_core.backends.hookspecs import hookimpl as hookimpl

    __version__: str

#: Public name → the module that defines it (imported on first use: ``import meda_core``
#: stays cheap — no pluggy, no importlib.metadata, which the CLI's ``--help`` never
#: needs — and modules that import ``hookimpl`` from here never go in a circle).
_PUBLIC = {
    "hookimpl": "backends.hookspecs",
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

__all__ = ["__version__", *sorted(_PUBLIC)]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("meda")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    if name in _PUBLIC:
        return getattr(import_module(f"meda_core.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'meda_core' has no attribute {name!r}")
