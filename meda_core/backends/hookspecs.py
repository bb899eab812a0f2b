"""The hooks a meda plugin may implement: one to register backends, one to observe VMs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from meda_core.backends.catalogue import BackendRegistry
    from meda_core.state.events import VMEvent

hookspec = pluggy.HookspecMarker("meda")
hookimpl = pluggy.HookimplMarker("meda")


@hookspec
def meda_register_backends(registry: BackendRegistry) -> None:
    """Add backend classes: ``registry.add(MyHypervisor)``."""


@hookspec
def meda_vm_event(event: VMEvent) -> None:
    """Observe a VM lifecycle event. Exceptions are logged, never propagated."""
