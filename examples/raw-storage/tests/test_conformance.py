"""The raw backend passes meda's storage conformance suite (from meda's pytest plugin)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from meda_raw_storage import RawStorage

from meda_core.plugin import BackendContext
from meda_core.testing.conformance import StorageConformance


class TestRawStorage(StorageConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> RawStorage:
        return RawStorage(backend_context)


def test_a_qcow2_base_becomes_a_raw_disk_with_its_bytes(
    backend_context: BackendContext, tmp_path: Path
) -> None:
    """Images from ``meda images build`` have qcow2 bases: a raw VM disk is their bytes."""
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", str(base)],
        check=True,
        capture_output=True,
    )
    disk = tmp_path / "disk.raw"
    info = RawStorage(backend_context).create_disk(disk, 4 * 2**20, base, "qcow2")
    assert info.format == "raw" and info.virtual_size == 4 * 2**20
    assert disk.read_bytes()[:4096] == b"\x5a" * 4096
