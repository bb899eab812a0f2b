"""The qcow2 storage backend: per-VM overlays on an image's base disk, via ``qemu-img``.

Every disk is handed to ``qemu-img`` with its format (``-f``, ``-F``) as meda's own probe
found it, so no format is guessed from what a guest may have written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from meda_core.plugin import (
    Availability,
    BackendError,
    Capability,
    DiskInfo,
    InvalidRequest,
    StorageBackend,
    atomic_file,
    diskprobe,
)

QEMU_IMG = os.environ.get("MEDA_QEMU_IMG", "qemu-img")


def _qemu_img(*args: str) -> str:
    try:
        result = subprocess.run(
            [QEMU_IMG, *args], capture_output=True, text=True, timeout=120, check=False
        )
    except FileNotFoundError:
        raise BackendError(f"'{QEMU_IMG}' not found (apt-get install qemu-utils)") from None
    if result.returncode != 0:
        raise BackendError(f"qemu-img {args[0]} failed: {result.stderr.strip()}", args=list(args))
    return result.stdout


def _format(path: Path, probe: Callable[[Path], str] = diskprobe.detect) -> str:
    """The disk's format by meda's own ``probe`` (``qemu-img`` is never left to guess); a
    disk that cannot be read is a BackendError, as any qemu-img failure."""
    try:
        return probe(path)
    except OSError as exc:
        raise BackendError(f"cannot read disk {path}: {exc.strerror}", path=str(path)) from None


class Qcow2Storage(StorageBackend):
    name = "qcow2"
    disk_format = "qcow2"
    priority = 10  # the default: a third-party storage is chosen when asked for
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.COPY_ON_WRITE, Capability.RESIZE}
    )

    def check_available(self) -> Availability:
        if shutil.which(QEMU_IMG) is None:
            return Availability.no(f"'{QEMU_IMG}' not found on PATH (apt-get install qemu-utils)")
        return Availability.yes()

    def create_disk(
        self, dest: Path, size: int, base: Path | None = None, base_format: str | None = None
    ) -> DiskInfo:
        if size <= 0:
            raise InvalidRequest("disk size must be positive")
        args = ["create", "-q", "-f", self.disk_format]
        if base is not None:
            found = _format(base, diskprobe.check_standalone)  # qemu-img opens what it names
            if base_format not in (None, found):
                raise BackendError(f"base disk {base} is {found}, not {base_format}")
            args += ["-b", str(base.resolve()), "-F", found]
        with atomic_file(dest) as tmp:
            _qemu_img(*args, str(tmp), str(size))
        return self.disk_info(dest)

    def create_overlay(self, dest: Path, size: int, base: Path) -> DiskInfo:
        # -u: never open the base, which the VM being snapshotted still holds locked.
        diskprobe.check_chain(base, diskprobe.roots(self.context.settings))
        base_args = ["-b", str(base.resolve()), "-F", _format(base)]
        with atomic_file(dest) as tmp:
            _qemu_img("create", "-q", "-f", self.disk_format, "-u", *base_args, str(tmp), str(size))
        return self.disk_info(dest)

    def flatten(self, source: Path, dest: Path) -> DiskInfo:
        with atomic_file(dest) as tmp:
            source_format = _format(source)
            _qemu_img(
                "convert", "-q", "-f", source_format, "-O", self.disk_format, str(source), str(tmp)
            )
            diskprobe.check_standalone(tmp)
        return self.disk_info(dest)

    def delete_disk(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def disk_info(self, path: Path) -> DiskInfo:
        # -U: a running VM holds a lock on its disk; reading its header is still safe.
        data = json.loads(_qemu_img("info", "-U", "-f", _format(path), "--output=json", str(path)))
        backing = data.get("full-backing-filename") or data.get("backing-filename")
        return DiskInfo(
            format=data["format"],
            virtual_size=int(data["virtual-size"]),
            actual_size=int(data.get("actual-size", 0)),
            backing_file=Path(backing) if backing else None,
        )
