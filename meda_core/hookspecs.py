"""The hooks a meda plugin may implement: one to register backends, one to observe VMs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from meda_core.events import VMEvent
    from meda_core.registry import BackendRegistry

hookspec = pluggy.HookspecMarker("meda")
hookimpl = pluggy.HookimplMarker("meda")


@hookspec
def meda_register_backends(registry: BackendRegistry) -> None:
    """Add backend classes: ``registry.add(MyHypervisor)``."""


@hookspec
def meda_vm_event(event: VMEvent) -> None:
    """Observe a VM lifecycle event. Exceptions are logged, never propagated."""
