"""File helpers: files made whole or not at all, and copies that keep holes (disk images
are mostly sparse) and stay private."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meda_core.host.private import create_private

_CHUNK = 64 * 1024 * 1024


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    while length > 0:
        copied = os.copy_file_range(src, dst, min(length, _CHUNK), offset, offset)
        if copied == 0:
            raise OSError(f"unexpected end of file at {offset}")
        offset += copied
        length -= copied


def copy_sparse(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest``, writing only the data regions (holes stay holes)."""
    size = source.stat().st_size
    with source.open("rb") as src, os.fdopen(create_private(dest), "wb") as dst:
        fin, fout = src.fileno(), dst.fileno()
        offset = 0
        while offset < size:
            try:
                data = os.lseek(fin, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            hole = os.lseek(fin, data, os.SEEK_HOLE)
            _copy_range(fin, fout, data, hole - data)
            offset = hole
        os.ftruncate(fout, size)
        os.fsync(fout)


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """A temporary path beside ``dest`` to make the file at: renamed to ``dest`` when the
    block ends without error, removed when it fails, so ``dest`` is never half made."""
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        yield tmp
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)
