"""meda's cloud-hypervisor plugin: the VMM's REST API over its Unix socket."""

from __future__ import annotations

from meda_cloudhv.backend import CloudHypervisor
from meda_core.plugin import BackendRegistry, hookimpl

__all__ = ["CloudHypervisor"]


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(CloudHypervisor)
