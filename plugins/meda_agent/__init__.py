"""meda's guest agent plugin: a small static program in the guest, and the host side."""

from __future__ import annotations

from meda_agent.backend import MedaAgent
from meda_core.plugin import BackendRegistry, hookimpl

__all__ = ["MedaAgent"]


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(MedaAgent)
