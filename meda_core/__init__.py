"""meda's core: models, errors, plugin system, state and the VM service (no web, no CLI)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("meda")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

from meda_core.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
