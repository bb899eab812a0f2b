"""meda-raw-storage: VM disks as raw files, copied with reflink where the filesystem can.

A third-party meda plugin: installed with pip, found through the ``meda`` entry point
group, selected with ``MEDA_STORAGE=raw``. On btrfs or XFS a copy is a reflink (instant,
shared until written); elsewhere it is a sparse copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from meda_core.plugin import (
    Availability,
    BackendError,
    BackendRegistry,
    Capability,
    DiskInfo,
    InvalidRequest,
    StorageBackend,
    atomic_file,
    hookimpl,
)


class RawStorage(StorageBackend):
    name = "raw"
    disk_format = "raw"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.REFLINK})
    priority = 1  # below qcow2: chosen only when asked for (or when qcow2 is missing)

    def check_available(self) -> Availability:
        if shutil.which("cp") is None:
            return Availability.no("'cp' not found (coreutils)")
        return Availability.yes()

    def create_disk(
        self, dest: Path, size: int, base: Path | None = None, base_format: str | None = None
    ) -> DiskInfo:
        if size <= 0:
            raise InvalidRequest("disk size must be positive")
        if base is not None and base_format not in (None, "raw", "qcow2"):
            raise BackendError(f"raw storage cannot use a {base_format} base")
        with atomic_file(dest) as tmp:
            if base is not None and base_format == "qcow2":
                self._convert(base, tmp)  # meda has checked the base stands alone
            elif base is not None:
                self._copy(base, tmp)
            else:
                tmp.touch()
            if tmp.stat().st_size > size:
                raise InvalidRequest(f"the base is larger than {size} bytes")
            os.truncate(tmp, size)  # grows sparsely
        return self.disk_info(dest)

    def delete_disk(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def disk_info(self, path: Path) -> DiskInfo:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise BackendError(f"no disk at {path}") from None
        return DiskInfo("raw", stat.st_size, stat.st_blocks * 512)

    def flatten(self, source: Path, dest: Path) -> DiskInfo:
        with atomic_file(dest) as tmp:
            self._copy(source, tmp)
        return self.disk_info(dest)

    @staticmethod
    def _convert(source: Path, dest: Path) -> None:
        """A raw copy of a qcow2 base (an image from ``meda images build``, say)."""
        argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(source), str(dest)]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BackendError(f"converting {source} failed: {result.stderr.strip()}")

    @staticmethod
    def _copy(source: Path, dest: Path) -> None:
        result = subprocess.run(
            ["cp", "--reflink=auto", "--sparse=always", str(source), str(dest)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BackendError(f"copying {source} failed: {result.stderr.strip()}")


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(RawStorage)
