"""``meda images build``'s own steps, its root tree made without the network: the disk is
made in the storage backend's format and under its name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meda_core.backends.roles import DiskInfo
from meda_core.facade import Meda
from meda_core.images import build as imagebuild
from meda_core.testing.fakes import FakeStorage


def _small_root(spec: imagebuild.BuildSpec, root: Path, log: imagebuild.Log) -> None:
    """What mmdebstrap would make, in miniature: a file system with a kernel and initrd."""
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "vmlinuz-6.1").write_bytes(b"a kernel")
    (root / "boot" / "initrd.img-6.1").write_bytes(b"an initrd")
    (root / "etc").mkdir()
    (root / "etc" / "os-release").write_text("ID=debian\n")


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4 (e2fsprogs)")
def test_the_built_disk_is_flattened_by_the_storage_backend(
    fake_meda: Meda, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flattened: list[tuple[str, str]] = []
    flatten = FakeStorage.flatten

    def recording(self: FakeStorage, source: Path, dest: Path) -> DiskInfo:
        flattened.append((source.name, dest.name))
        return flatten(self, source, dest)

    monkeypatch.setattr(FakeStorage, "flatten", recording)
    monkeypatch.setattr(imagebuild, "_root_tree", _small_root)
    spec = imagebuild.BuildSpec(disk_headroom_mib=8)
    logged: list[str] = []
    image = imagebuild.build(fake_meda.images, "deb:t", spec, tmp_path / "work", logged.append)
    assert flattened == [("fs.raw", "disk.fake")]  # the storage's format, not a literal
    assert image.disk is not None and image.disk.read_text().startswith("fake ")
    assert (image.source, image.ready_port, image.cmdline) == (
        f"build:{spec.key()}",
        imagebuild.READY_PORT,
        imagebuild.CMDLINE,
    )
    assert logged[-1].startswith("built deb:t: ") and not (tmp_path / "work").exists()
    # Built again from the same inputs, it is found, not made.
    again = imagebuild.build(fake_meda.images, "deb:t", spec, tmp_path / "work", logged.append)
    assert again == image and len(flattened) == 1
