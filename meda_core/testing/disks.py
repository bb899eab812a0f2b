"""Hostile disk files for tests: qcow2 disks that name host files, and foreign formats."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MiB = 1024 * 1024
#: Formats ``qemu-img create`` can make that meda must refuse.
FOREIGN_FORMATS = ("vmdk", "vdi", "vhdx", "qed", "vpc", "qcow")


def qemu_img(*args: str) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed (apt-get install qemu-utils)")
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def backed_by(path: Path, target: Path, target_format: str = "raw") -> Path:
    """A qcow2 disk at ``path`` whose backing file is ``target`` (not opened here)."""
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        str(target),
        "-F",
        target_format,
        str(path),
        str(MiB),
    )
    return path


def with_data_file(path: Path, target: Path) -> Path:
    """A qcow2 disk whose data lives in ``target`` (data-file-raw: ``target`` is the disk)."""
    scratch = path.with_name(path.name + ".data")
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        f"data_file={scratch},data_file_raw=on",
        str(path),
        str(MiB),
    )
    scratch.unlink()
    # The header names the scratch file; point it at ``target`` (same length or padded).
    header = path.read_bytes()
    old = str(scratch).encode()
    new = str(target).encode()
    assert len(new) <= len(old), "target path must not be longer than the scratch path"
    path.write_bytes(header.replace(old, new.ljust(len(old), b"\0"), 1))
    return path


def foreign(path: Path, fmt: str) -> Path:
    """A small disk in ``fmt`` (vmdk, vdi, ...), which meda must not take in."""
    qemu_img("create", "-q", "-f", fmt, str(path), str(MiB))
    return path


def standalone(path: Path, content: bytes = b"") -> Path:
    """A qcow2 disk with no outside reference, ``content`` at its start."""
    qemu_img("create", "-q", "-f", "qcow2", str(path), str(MiB))
    if content:
        raw = path.with_name(path.name + ".raw")
        raw.write_bytes(content.ljust(MiB, b"\0"))
        qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
        raw.unlink()
    return path


def virtual_content(path: Path, fmt: str, length: int = MiB) -> bytes:
    """The first ``length`` bytes a guest would read, the whole backing chain followed."""
    out = path.with_name(path.name + ".read")
    qemu_img("dd", "-f", fmt, "-O", "raw", f"bs={length}", "count=1", f"if={path}", f"of={out}")
    try:
        return out.read_bytes()
    finally:
        out.unlink()
