"""Bounded streaming zstd: a disk chunk never unpacks past the size its manifest declares.

A zstd frame may declare any content size; one-shot decompression trusts it and allocates
that much. Here the chunk unpacks as its compressed bytes arrive, a piece at a time, into
the disk file in large writes, and stops one byte past the declared size; frames that need
a larger window than meda's compressor ever uses are refused, so memory stays small
whatever a chunk claims.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import IO, Any, cast

import zstandard

from meda_core.plugin import BackendError
from meda_oci import directio

MAX_WINDOW = 16 * 1024 * 1024  # zstd levels 1..19 use windows of at most 8 MiB
_PIECE = 1024 * 1024  # what the unpacker hands over at most at once
WRITE = 4 * 1024 * 1024  # what is written at once (a zero stretch this long stays a hole)
_ZEROS = bytes(WRITE)


class ChunkWriter:
    """Unpacks one chunk's compressed bytes, fed as they arrive, into ``fd`` at ``offset``.

    ``holes``: the chunk's range reads as zeros already (a fresh sparse file), so zero
    stretches are not written. More than ``size`` bytes, fewer, or a frame that is not
    zstd: refused by :meth:`finish`, which the caller asks only once the compressed bytes
    are verified (a wrong blob is refused as such). Unpacking stops at the first fault.

    The unpacked bytes are not hashed here: the compressed blob's digest is checked and
    zstd unpacks it one way only, so they are known already; the whole disk is hashed
    once, for the image store (:mod:`meda_oci.diskdigest`).
    """

    def __init__(
        self,
        fd: int,
        offset: int,
        size: int,
        holes: bool,
        written: Callable[[int], None] = lambda count: None,
        direct: int | None = None,
        offer: Callable[[int, memoryview, bool], None] = lambda start, data, keep: None,
    ) -> None:
        """``written(count)``: the chunk's first ``count`` bytes are on disk (or holes).
        ``direct``: an ``O_DIRECT`` descriptor on the same file, for aligned writes.
        ``offer(start, data, keep)``: the chunk's bytes from ``start`` on, just before they
        are written (to be hashed from memory); ``keep`` is False for zeros left as holes."""
        self._fd, self._offset, self._size, self._holes = fd, offset, size, holes
        self._written, self._direct, self._offer = written, direct, offer
        self._unpacked = self._flushed = self._filled = 0
        self._buffer = directio.buffer(WRITE)  # reused for every write of the chunk
        self._fault: BackendError | None = None
        self._unpacker: Any = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_writer(
            cast("IO[bytes]", self), write_size=_PIECE, closefd=False
        )

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the unpacker and the buffer, finished or not: the unpacker and this
        writer refer to each other, a cycle the collector cannot free (zstd's C object)."""
        self._unpacker = None
        self._buffer.close()

    def feed(self, compressed: bytes) -> None:
        if self._fault is not None or self._unpacker is None:
            return
        try:
            self._unpacker.write(compressed)
        except zstandard.ZstdError as exc:
            self._fault = BackendError(f"disk chunk does not unpack: {exc}")
        except BackendError as exc:
            self._fault = exc

    def write(self, piece: bytes) -> int:
        """The unpacker's output (not to be called by others)."""
        self._unpacked += len(piece)
        if self._unpacked > self._size:
            raise BackendError(
                f"disk chunk unpacks past its declared {self._size} bytes; refusing it",
                expected=self._size,
            )
        with memoryview(piece) as rest:
            while rest:
                step = min(WRITE - self._filled, len(rest))
                self._buffer[self._filled : self._filled + step] = rest[:step]
                self._filled, rest = self._filled + step, rest[step:]
                if self._filled == WRITE:
                    self._flush()
        return len(piece)

    def finish(self) -> None:
        """All unpacked bytes written, and as many as declared."""
        if self._fault is not None:
            raise self._fault
        if self._filled:
            self._flush()
        if self._unpacked != self._size:
            raise BackendError(
                f"disk chunk unpacks to {self._unpacked} bytes, not its declared {self._size}"
            )

    def _flush(self) -> None:
        count, self._filled = self._filled, 0
        hole = self._holes and _zeros(self._buffer, count)
        with memoryview(self._buffer) as view, view[:count] as piece:
            self._offer(self._flushed, piece, not hole)
            if not hole:
                directio.pwrite(self._fd, self._direct, piece, self._offset + self._flushed)
        self._flushed += count
        self._written(self._flushed)


def _zeros(buffer: mmap.mmap, count: int) -> bool:
    """The first ``count`` bytes are all zero (the ends first: data rarely starts with 0)."""
    if buffer[0] or buffer[count - 1]:
        return False
    return buffer.find(_ZEROS if count == WRITE else bytes(count), 0, count) == 0
