"""Writes and reads of a pulled disk that bypass the page cache, where the file system can.

A pull writes each byte of the disk once and never reads it through the cache again: the
cache copy (and, in a guest, first touch of fresh cache pages) cost more CPU than the
download itself. ``O_DIRECT`` needs the offset, length and memory of each transfer
aligned; whatever is not (a disk's unaligned tail) goes through the ordinary descriptor.
"""

from __future__ import annotations

import errno
import mmap
import os

ALIGN = 4096  # the largest logical block size a Linux block device has


def open_direct(path: os.PathLike[str] | str) -> int | None:
    """A second descriptor on ``path`` (already created) for ``O_DIRECT`` reads and
    writes; None where the file system refuses it (tmpfs, some FUSE)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_RDWR | flag)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


def aligned(offset: int, length: int) -> bool:
    return offset % ALIGN == 0 and length % ALIGN == 0


def buffer(size: int) -> mmap.mmap:
    """``size`` bytes of page-aligned memory (``O_DIRECT`` needs aligned memory)."""
    return mmap.mmap(-1, size)


def pwrite(fd: int, direct: int | None, data: memoryview, offset: int) -> None:
    """All of ``data`` at ``offset``: through ``direct`` when it can, else through ``fd``."""
    if direct is not None and aligned(offset, len(data)):
        try:
            done = os.pwrite(direct, data, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: a larger alignment than ALIGN is needed
                raise
        else:
            if done == len(data):
                return
            offset, data = offset + done, data[done:]
    while data:
        done = os.pwrite(fd, data, offset)
        offset, data = offset + done, data[done:]
