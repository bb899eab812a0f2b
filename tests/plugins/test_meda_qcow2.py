from __future__ import annotations

from pathlib import Path

import pytest

from meda_core.backends import BackendContext
from meda_core.testing.conformance import StorageConformance
from meda_qcow2 import Qcow2Storage


class TestQcow2Conformance(StorageConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> Qcow2Storage:
        backend = Qcow2Storage(backend_context)
        if not backend.check_available().ok:
            pytest.skip(backend.check_available().reason or "")
        return backend


def test_overlay_writes_do_not_touch_the_base(
    tmp_path: Path, backend_context: BackendContext
) -> None:
    storage = Qcow2Storage(backend_context)
    base = tmp_path / "base.raw"
    base.write_bytes(b"\xab" * 4096)
    before = base.read_bytes()
    info = storage.create_disk(tmp_path / "vm.qcow2", 1 << 30, base, "raw")
    assert info.format == "qcow2" and info.virtual_size == 1 << 30
    assert info.actual_size < 1 << 20  # copy-on-write: nothing copied
    assert base.read_bytes() == before
    assert not (tmp_path / "vm.qcow2.tmp").exists()
