"""The raw backend passes meda's storage conformance suite (from meda's pytest plugin)."""

from __future__ import annotations

import pytest
from meda_raw_storage import RawStorage

from meda_core.plugin import BackendContext
from meda_core.testing.conformance import StorageConformance


class TestRawStorage(StorageConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> RawStorage:
        return RawStorage(backend_context)
