"""The oci-layout backend passes meda's registry conformance suite (from meda's pytest plugin)."""

from __future__ import annotations

from meda_core.testing.conformance import RegistryConformance


class TestLayoutRegistry(RegistryConformance):
    """``backend`` and ``reference`` come from conftest.py."""
