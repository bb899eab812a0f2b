"""meda's qcow2 storage plugin: copy-on-write overlays made with ``qemu-img``."""

from __future__ import annotations

from meda_core.plugin import BackendRegistry, hookimpl
from meda_qcow2.backend import Qcow2Storage

__all__ = ["Qcow2Storage"]


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(Qcow2Storage)
