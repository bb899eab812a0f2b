"""What a disk file really is: meda's own probe of its format and of the files it names."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meda_core.errors import BackendUnavailable, UnsafeDisk
from meda_core.inputs.sizes import parse_size
from meda_core.settings import Settings

#: The only disk formats meda keeps, boots and pushes.
FORMATS = ("raw", "qcow2")
QCOW2_MAGIC = b"QFI\xfb"
MAX_CHAIN = 32

#: Signatures of formats meda refuses: (offset, bytes, format). The rest is raw data.
_FOREIGN = (
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    (0, b"QED\x00", "qed"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
)
_HEAD = 512

# qcow2 header extensions (docs/interop/qcow2.txt in QEMU) and feature bits.
_EXT_END, _EXT_BACKING_FORMAT, _EXT_CRYPTO, _EXT_DATA_FILE = 0, 0xE2792ACA, 0x0537BE77, 0x44415441
_INCOMPAT_DATA_FILE = 1 << 2
_AUTOCLEAR_DATA_FILE_RAW = 1 << 1


@dataclass(frozen=True)
class Qcow2Header:
    """The fields of a qcow2 header that can reach outside the file."""

    version: int
    virtual_size: int
    backing_file: str | None
    backing_format: str | None
    data_file: str | None
    external_data: bool
    encrypted: bool


@dataclass(frozen=True)
class ProbeLimits:
    """What ``qemu-img info`` may use on a disk meda has not checked yet (as OpenStack)."""

    cpu_seconds: int = 30
    address_space: int = 1 << 30


def limits(settings: Settings) -> ProbeLimits:
    """The limits ``MEDA_DISK_PROBE_CPU_SECONDS`` and ``MEDA_DISK_PROBE_MEMORY`` set."""
    return ProbeLimits(settings.disk_probe_cpu_seconds, parse_size(settings.disk_probe_memory))


def roots(settings: Settings) -> tuple[Path, Path]:
    """Where a disk meda boots may rest: the blob store (images) and the VMs' folders."""
    return settings.home / "blobs" / "sha256", settings.vms_dir


def detect(path: Path) -> str:
    """``qcow2`` or ``raw``, from the file's own bytes; any other known format is refused."""
    with path.open("rb") as disk:
        head = disk.read(_HEAD)
        size = disk.seek(0, os.SEEK_END)
        tail = b""
        if size >= 2 * _HEAD:
            disk.seek(size - _HEAD)
            tail = disk.read(4)
    if head.startswith(QCOW2_MAGIC):
        version = struct.unpack(">I", head[4:8])[0] if len(head) >= 8 else 0
        if version in (2, 3):
            return "qcow2"
        raise _refuse(path, f"a qcow version {version} disk")
    for offset, magic, name in _FOREIGN:
        if head[offset : offset + len(magic)] == magic:
            raise _refuse(path, f"a {name} disk")
    if tail == b"koly":
        raise _refuse(path, "a dmg disk")
    return "raw"


def read_qcow2_header(path: Path) -> Qcow2Header:
    """Parse the header and its extensions, without trusting any offset in them."""
    with path.open("rb") as disk:
        head = disk.read(104)
        if len(head) < 72 or not head.startswith(QCOW2_MAGIC):
            raise _refuse(path, "a truncated qcow2 header")
        version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
        virtual_size, crypt_method = struct.unpack(">QI", head[24:36])
        incompatible = autoclear = 0
        header_length = 72
        if version >= 3:
            if len(head) < 104:
                raise _refuse(path, "a truncated qcow2 header")
            incompatible, _, autoclear = struct.unpack(">QQQ", head[72:96])
            header_length = struct.unpack(">I", head[100:104])[0]
        backing = _read_string(disk, backing_offset, backing_size, path) if backing_offset else None
        extensions = _extensions(disk, header_length, path)
    data_file = extensions.get(_EXT_DATA_FILE)
    backing_format = extensions.get(_EXT_BACKING_FORMAT)
    return Qcow2Header(
        version=version,
        virtual_size=virtual_size,
        backing_file=backing,
        backing_format=_text(backing_format) if backing_format else None,
        data_file=_text(data_file) if data_file is not None else None,
        external_data=bool(incompatible & _INCOMPAT_DATA_FILE)
        or bool(autoclear & _AUTOCLEAR_DATA_FILE_RAW),
        encrypted=crypt_method != 0 or _EXT_CRYPTO in extensions,
    )


def _read_string(disk: Any, offset: int, size: int, path: Path) -> str:
    if size == 0 or size > 4096:
        raise _refuse(path, "a qcow2 header with a malformed backing file name")
    disk.seek(offset)
    data: bytes = disk.read(size)
    return _text(data)


def _text(data: bytes) -> str:
    return data.decode(errors="replace").rstrip("\0")


def _extensions(disk: Any, start: int, path: Path) -> dict[int, bytes]:
    """Header extensions by type; they sit between the header and the first cluster."""
    found: dict[int, bytes] = {}
    disk.seek(start)
    for _ in range(64):
        raw: bytes = disk.read(8)
        if len(raw) < 8:
            return found
        kind, length = struct.unpack(">II", raw)
        if kind == _EXT_END:
            return found
        if length > 64 * 1024:
            raise _refuse(path, "a qcow2 header extension too long to be real")
        found[kind] = disk.read(length)
        disk.seek((8 - length % 8) % 8, os.SEEK_CUR)
    raise _refuse(path, "a qcow2 header with more extensions than any real one")


def check_standalone(path: Path) -> str:
    """The disk's format if it names no other file (cheap: reads the header only)."""
    fmt = detect(path)
    if fmt == "qcow2":
        header = read_qcow2_header(path)
        _check_no_outside(path, header)
        if header.backing_file is not None:
            raise _refuse(path, f"a qcow2 disk backed by another file ({header.backing_file})")
    return fmt


def _check_no_outside(path: Path, header: Qcow2Header) -> None:
    if header.data_file is not None or header.external_data:
        name = header.data_file or "(unnamed)"
        raise _refuse(path, f"a qcow2 disk whose data is in an external file {name}")
    if header.encrypted:
        raise _refuse(path, "an encrypted qcow2 disk")


def verify(path: Path, limits: ProbeLimits) -> str:
    """:func:`check_standalone`, and for qcow2 also QEMU's own reading of the header
    (``qemu-img info -f qcow2`` under CPU and memory limits)."""
    fmt = check_standalone(path)
    if fmt == "qcow2":
        info = _qemu_img_info(path, limits)
        data = info.get("format-specific", {}).get("data", {})
        if info.get("format") != "qcow2":
            raise _refuse(path, f"a disk qemu-img reads as {info.get('format')}")
        if info.get("backing-filename") or info.get("full-backing-filename"):
            raise _refuse(path, f"a qcow2 disk backed by {info.get('backing-filename')}")
        if data.get("data-file") or data.get("data-file-raw") or info.get("encrypted"):
            raise _refuse(path, "a qcow2 disk that refers to an external or encrypted file")
    return fmt


def _qemu_img_info(path: Path, limits: ProbeLimits) -> dict[str, Any]:
    qemu_img = os.environ.get("MEDA_QEMU_IMG", "qemu-img")
    prlimit = shutil.which("prlimit")
    if shutil.which(qemu_img) is None or prlimit is None:
        raise BackendUnavailable(
            "checking a qcow2 disk needs qemu-img and prlimit (apt-get install qemu-utils "
            "util-linux)"
        )
    argv = [
        prlimit,
        f"--cpu={limits.cpu_seconds}",
        f"--as={limits.address_space}",
        qemu_img,
        "info",
        "-U",
        "-f",
        "qcow2",
        "--output=json",
        str(path.resolve()),
    ]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=limits.cpu_seconds * 2, check=False
        )
    except subprocess.TimeoutExpired:
        raise _refuse(path, "a qcow2 disk qemu-img could not read in time") from None
    if result.returncode != 0:
        why = result.stderr.strip()[:300] or f"exit status {result.returncode}"
        raise _refuse(path, f"a qcow2 disk qemu-img cannot read ({why})")
    try:
        info: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        raise _refuse(path, "a qcow2 disk qemu-img describes in no JSON it can parse") from None
    return info


def check_chain(disk: Path, roots: Sequence[Path], fmt: str | None = None) -> None:
    """Refuse a disk whose chain leaves ``roots`` (meda's own folders) or names a data
    file; a layer in ``roots[0]`` (the blob store) must stand alone."""
    resolved = [root.resolve() for root in roots]
    if fmt == "raw":  # a VM disk its storage made raw: data, whatever its guest wrote
        return
    # A format meda does not probe (a third-party storage's own) is checked by its bytes;
    # no hypervisor meda ships opens it anyway.
    path, declared = disk, fmt if fmt in FORMATS else None
    for _ in range(MAX_CHAIN):
        found = detect(path)
        if declared is not None and declared != found:
            raise _refuse(path, f"a {found} disk recorded as {declared}")
        if found == "raw":
            return
        header = read_qcow2_header(path)
        _check_no_outside(path, header)
        if header.backing_file is None:
            return
        if path.resolve().is_relative_to(resolved[0]):
            raise _refuse(path, f"an image disk backed by another file ({header.backing_file})")
        backing = _inside(path, header.backing_file, resolved)
        if header.backing_format not in FORMATS:
            raise _refuse(path, "a disk whose backing file has no format meda keeps")
        path, declared = backing, header.backing_format
    raise _refuse(disk, f"a disk chain deeper than {MAX_CHAIN}")


def _inside(layer: Path, name: str, roots: Sequence[Path]) -> Path:
    backing = Path(name) if name.startswith("/") else layer.parent / name
    resolved = backing.resolve()
    if ":" in name.split("/", 1)[0] or not any(resolved.is_relative_to(r) for r in roots):
        raise _refuse(layer, f"a disk backed by {name}, outside meda's own files")
    return resolved


def _refuse(path: Path, what: str) -> UnsafeDisk:
    return UnsafeDisk(
        f"{path.name} is {what}: meda keeps, boots and pushes only standalone raw and qcow2 disks",
        disk=str(path),
    )
