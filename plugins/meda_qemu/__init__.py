"""meda's QEMU hypervisor plugin (``qemu-system-x86_64`` over QMP, KVM or TCG)."""

from __future__ import annotations

from meda_core.plugin import BackendRegistry, hookimpl
from meda_qemu.backend import QemuHypervisor

__all__ = ["QemuHypervisor"]


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(QemuHypervisor)
