"""meda's oci registry plugin: images as OCI artifacts (zstd chunks), on oras-py."""

from __future__ import annotations

from meda_core.plugin import BackendRegistry, hookimpl
from meda_oci.backend import OciRegistry

__all__ = ["OciRegistry"]


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(OciRegistry)
