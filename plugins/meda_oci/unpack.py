"""Bounded streaming zstd: a disk chunk never unpacks past the size its manifest declares.

A zstd frame may declare any content size; one-shot decompression trusts it and allocates
that much. Here the chunk unpacks as its compressed bytes arrive, a piece at a time, into
the disk file in large writes, and stops one byte past the declared size; frames that need
a larger window than meda's compressor ever uses are refused, so memory stays small
whatever a chunk claims.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, cast

import zstandard

from meda_core.plugin import BackendError

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
    ) -> None:
        """``written(count)``: the chunk's first ``count`` bytes are on disk (or holes)."""
        self._fd, self._offset, self._size, self._holes = fd, offset, size, holes
        self._written = written
        self._unpacked = self._flushed = 0
        self._buffer = bytearray()
        self._fault: BackendError | None = None
        self._unpacker = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_writer(
            cast("IO[bytes]", self), write_size=_PIECE, closefd=False
        )

    def feed(self, compressed: bytes) -> None:
        if self._fault is not None:
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
        self._buffer += piece
        while len(self._buffer) >= WRITE:
            self._flush(WRITE)
        return len(piece)

    def finish(self) -> None:
        """All unpacked bytes written, and as many as declared."""
        if self._fault is not None:
            raise self._fault
        if self._buffer:
            self._flush(len(self._buffer))
        if self._unpacked != self._size:
            raise BackendError(
                f"disk chunk unpacks to {self._unpacked} bytes, not its declared {self._size}"
            )

    def _flush(self, count: int) -> None:
        zero = self._holes and self._buffer.startswith(_ZEROS if count == WRITE else bytes(count))
        if not zero:
            with memoryview(self._buffer) as view, view[:count] as piece:
                os.pwrite(self._fd, piece, self._offset + self._flushed)
        del self._buffer[:count]
        self._flushed += count
        self._written(self._flushed)
