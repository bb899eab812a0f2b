"""meda's own disk probe: the format from the bytes, and every file a disk names refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from meda_core.errors import UnsafeDisk
from meda_core.images import diskprobe
from meda_core.testing import disks

LIMITS = diskprobe.ProbeLimits()


@pytest.mark.parametrize("fmt", disks.FOREIGN_FORMATS)
def test_foreign_formats_are_refused(tmp_path: Path, fmt: str) -> None:
    disk = disks.foreign(tmp_path / f"disk.{fmt}", fmt)
    with pytest.raises(UnsafeDisk):
        diskprobe.verify(disk, LIMITS)


@pytest.mark.parametrize(
    "head", [b"LUKS\xba\xbe\x00\x01", b"# Disk DescriptorFile\nversion=1\n", b"QFI\xfb\0\0\0\x01"]
)
def test_written_magics_are_refused(tmp_path: Path, head: bytes) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(head.ljust(4096, b"\0"))
    with pytest.raises(UnsafeDisk):
        diskprobe.detect(disk)


def test_anything_else_is_raw_and_a_clean_qcow2_is_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x55\xaa" * 2048)
    assert diskprobe.verify(raw, LIMITS) == "raw"
    assert diskprobe.verify(disks.standalone(tmp_path / "ok.qcow2"), LIMITS) == "qcow2"


def test_a_backing_file_is_refused(tmp_path: Path, host_secret: Path) -> None:
    disk = disks.backed_by(tmp_path / "disk.qcow2", host_secret)
    assert host_secret.read_bytes() in disks.virtual_content(disk, "qcow2")  # the attack
    with pytest.raises(UnsafeDisk, match="backed by"):
        diskprobe.verify(disk, LIMITS)


def test_an_external_data_file_is_refused(tmp_path: Path, host_secret: Path) -> None:
    disk = disks.with_data_file(tmp_path / "a-long-enough-name.qcow2", host_secret)
    assert host_secret.read_bytes() in disks.virtual_content(disk, "qcow2")  # the attack
    with pytest.raises(UnsafeDisk, match="external"):
        diskprobe.verify(disk, LIMITS)


def test_an_encrypted_qcow2_is_refused(tmp_path: Path) -> None:
    disk = disks.standalone(tmp_path / "crypt.qcow2")
    with disk.open("r+b") as f:  # crypt_method 1 (AES): QEMU asks for a key meda has not
        f.seek(32)
        f.write((1).to_bytes(4, "big"))
    with pytest.raises(UnsafeDisk, match="encrypted"):
        diskprobe.verify(disk, LIMITS)


def test_qemu_img_runs_under_the_limits(tmp_path: Path) -> None:
    disk = disks.standalone(tmp_path / "ok.qcow2")
    with pytest.raises(UnsafeDisk, match="cannot read"):
        diskprobe.verify(disk, diskprobe.ProbeLimits(address_space=1 << 20))


def test_a_chain_may_rest_only_on_meda_s_own_files(tmp_path: Path, host_secret: Path) -> None:
    blobs, vms = tmp_path / "blobs", tmp_path / "vms"
    blobs.mkdir()
    vms.mkdir()
    base = disks.standalone(blobs / "base")
    overlay = disks.backed_by(vms / "disk.qcow2", base, "qcow2")
    diskprobe.check_chain(overlay, (blobs, vms))
    with pytest.raises(UnsafeDisk, match="outside"):
        diskprobe.check_chain(disks.backed_by(vms / "evil.qcow2", host_secret), (blobs, vms))
    bad_base = disks.backed_by(blobs / "bad", host_secret)
    with pytest.raises(UnsafeDisk, match="image disk backed"):
        diskprobe.check_chain(disks.backed_by(vms / "vm2.qcow2", bad_base, "qcow2"), (blobs, vms))
    with pytest.raises(UnsafeDisk, match="recorded as raw"):
        diskprobe.check_chain(disks.backed_by(vms / "vm3.qcow2", base, "raw"), (blobs, vms))
