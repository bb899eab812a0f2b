"""The whole disk's digest, taken in order right behind chunks that land out of order.

Each chunk is hashed from the page cache as soon as it and all before it are written, so
the digest is ready when the last chunk is, instead of after a second pass over the disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from functools import partial
from typing import Any

from meda_oci.unpack import WRITE

_ZEROS = memoryview(bytes(WRITE))


class DiskDigest:
    """Hashes ``fd``'s ``size`` bytes, chunk by chunk, as :meth:`ready` releases them."""

    def __init__(self, fd: int, size: int, chunk_size: int) -> None:
        self._fd, self._size, self._chunk_size = fd, size, chunk_size
        self.count = (size + chunk_size - 1) // chunk_size
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
        hasher, buffer = hashlib.sha256(), bytearray(WRITE)
        try:
            for index in range(self.count):
                with self._changed:
                    self._changed.wait_for(partial(self._may_hash, index))
                    if self._cancelled:
                        return
                self._hash_range(hasher, buffer, index * self._chunk_size)
            self._digest = f"sha256:{hasher.hexdigest()}"
        except BaseException as exc:  # handed to result()
            self._error = exc

    def _may_hash(self, index: int) -> bool:
        return index in self._ready or self._cancelled

    def _hash_range(self, hasher: Any, buffer: bytearray, start: int) -> None:
        """Hash one chunk's range: holes as zeros without reading them (a read would fill
        the page cache with zeros), data from the page cache it was just written to."""
        end, view = min(start + self._chunk_size, self._size), memoryview(buffer)
        while start < end:
            data = _next_data(self._fd, start, end)
            while start < data:
                step = min(WRITE, data - start)
                hasher.update(_ZEROS[:step] if step < WRITE else _ZEROS)
                start += step
            hole = min(os.lseek(self._fd, start, os.SEEK_HOLE), end) if start < end else end
            while start < hole:
                got = os.preadv(self._fd, [view[: min(WRITE, hole - start)]], start)
                if got <= 0:
                    raise OSError(f"the disk file ended at {start} of {self._size} bytes")
                hasher.update(view[:got])
                start += got


def _next_data(fd: int, start: int, end: int) -> int:
    """Where data begins at or after ``start`` (``end``: only a hole is left)."""
    try:
        return min(os.lseek(fd, start, os.SEEK_DATA), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return end
        raise
