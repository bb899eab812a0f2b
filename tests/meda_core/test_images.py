from __future__ import annotations

from pathlib import Path

import pytest

from meda_core.app import Meda
from meda_core.errors import ImageExists, InvalidRequest


def test_import_copies_files_atomically(fake_meda: Meda, tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"k" * 100)
    initrd.write_bytes(b"i" * 50)
    image = fake_meda.images.import_files("tiny:v1", kernel=kernel, initrd=initrd, cmdline="x")
    assert image.kernel and image.kernel.read_bytes() == b"k" * 100
    assert image.size == 150 and image.ref == "tiny:v1"
    assert [i.ref for i in fake_meda.images.list()] == ["tiny:v1"]
    blobs = fake_meda.images.blobs
    assert blobs.digests() == {f"sha256:{image.kernel.name}", f"sha256:{image.initrd.name}"}
    assert not any((blobs.root / "staging").iterdir())
    with pytest.raises(ImageExists):
        fake_meda.images.import_files("tiny:v1", kernel=kernel)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"initrd": Path("/etc/hostname")}, {"kernel": Path("/nonexistent")}],
)
def test_bad_imports_are_refused_and_leave_nothing(fake_meda: Meda, kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidRequest):
        fake_meda.images.import_files("bad", **kwargs)
    assert fake_meda.images.list() == []
    assert fake_meda.images.blobs.digests() == set()


def test_disk_format_is_probed(fake_meda: Meda, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    assert fake_meda.images.import_files("raw", disk=disk).disk_format == "raw"
