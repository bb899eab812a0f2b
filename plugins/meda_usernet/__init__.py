"""meda's user-mode network plugin: QEMU's slirp NIC, forwards as ``hostfwd``, no root needed."""

from __future__ import annotations

from meda_core.plugin import BackendRegistry, hookimpl
from meda_usernet.backend import UserNetwork

__all__ = ["UserNetwork"]


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(UserNetwork)
