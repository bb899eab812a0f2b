"""meda-oci-layout: a registry backend that keeps meda images in OCI image-layout folders."""

from __future__ import annotations

from meda_core.plugin import BackendRegistry, hookimpl
from meda_oci_layout.backend import LayoutRegistry
from meda_oci_layout.settings import LayoutSettings

__all__ = ["LayoutRegistry", "LayoutSettings"]


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(LayoutRegistry)
