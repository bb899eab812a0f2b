"""The whole disk's digest, taken in order right behind chunks that land out of order.

The disk is read back and hashed right behind the writer of the first chunk not yet
hashed, so the digest is ready soon after the last chunk is, instead of after a second
pass over the disk. Where the writers bypass the page cache, so do these reads.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from functools import partial
from typing import Any

from meda_oci import directio
from meda_oci.unpack import WRITE

_ZEROS = memoryview(bytes(WRITE))


class DiskDigest:
    """Hashes ``fd``'s ``size`` bytes, chunk by chunk, as :meth:`ready` releases them."""

    def __init__(self, fd: int, size: int, chunk_size: int, direct: int | None = None) -> None:
        """``direct``: an ``O_DIRECT`` descriptor on the same file, for aligned reads."""
        self._fd, self._size, self._chunk_size, self._direct = fd, size, chunk_size, direct
        self.count = (size + chunk_size - 1) // chunk_size
        self._written: dict[int, int] = {}  # chunk -> bytes of it written so far
        self._ready: set[int] = set()
        self._cancelled = False
        self._error: BaseException | None = None
        self._digest: str | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="disk-digest", daemon=True)
        self._thread.start()

    def ready(self, index: int) -> None:
        """Chunk ``index``'s range holds its final bytes (a zero chunk: from the start)."""
        with self._changed:
            self._ready.add(index)
            self._changed.notify()

    def written(self, index: int, count: int) -> None:
        """The first ``count`` bytes of chunk ``index`` hold their final bytes."""
        with self._changed:
            self._written[index] = count
            self._changed.notify()

    def cancel(self) -> None:
        with self._changed:
            self._cancelled = True
            self._changed.notify()
        self._thread.join()

    def result(self) -> str:
        """``sha256:...`` of the whole disk, once every chunk is ready."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest

    def _run(self) -> None:
        hasher, buffer = hashlib.sha256(), directio.buffer(WRITE)
        try:
            for index in range(self.count):
                start = index * self._chunk_size
                end = min(start + self._chunk_size, self._size)
                while start < end:
                    upto = self._wait(index, start)
                    if upto < 0:
                        return
                    self._hash_range(hasher, buffer, start, min(upto, end))
                    start = min(upto, end)
            self._digest = f"sha256:{hasher.hexdigest()}"
        except BaseException as exc:  # handed to result()
            self._error = exc
        finally:
            buffer.close()

    def _wait(self, index: int, start: int) -> int:
        """Where chunk ``index``'s final bytes end, once past ``start`` (-1: cancelled)."""
        with self._changed:
            self._changed.wait_for(partial(self._moved, index, start))
            if self._cancelled:
                return -1
            if index in self._ready:
                return self._size
            return index * self._chunk_size + self._written[index]

    def _moved(self, index: int, start: int) -> bool:
        done = index * self._chunk_size + self._written.get(index, 0)
        return index in self._ready or self._cancelled or done > start

    def _hash_range(self, hasher: Any, buffer: mmap.mmap, start: int, end: int) -> None:
        """Hash ``start`` to ``end``: holes as zeros without reading them (a read would fill
        the page cache with zeros), data read back as it was written."""
        with memoryview(buffer) as view:
            while start < end:
                data = _next_data(self._fd, start, end)
                while start < data:
                    step = min(WRITE, data - start)
                    hasher.update(_ZEROS[:step] if step < WRITE else _ZEROS)
                    start += step
                hole = min(os.lseek(self._fd, start, os.SEEK_HOLE), end) if start < end else end
                while start < hole:
                    got = self._read(view, start, min(WRITE, hole - start))
                    hasher.update(view[:got])
                    start += got

    def _read(self, view: memoryview, start: int, want: int) -> int:
        """Read up to ``want`` bytes at ``start`` into ``view``; how many (at least one)."""
        whole = -(-want // directio.ALIGN) * directio.ALIGN  # a direct read: whole blocks
        if self._direct is not None and start % directio.ALIGN == 0:
            try:
                got = min(os.preadv(self._direct, [view[:whole]], start), want)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                got = os.preadv(self._fd, [view[:want]], start)
        else:
            got = os.preadv(self._fd, [view[:want]], start)
        if got <= 0:
            raise OSError(f"the disk file ended at {start} of {self._size} bytes")
        return got


def _next_data(fd: int, start: int, end: int) -> int:
    """Where data begins at or after ``start`` (``end``: only a hole is left)."""
    try:
        return min(os.lseek(fd, start, os.SEEK_DATA), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return end
        raise
