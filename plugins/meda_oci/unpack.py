"""Bounded streaming zstd: a disk chunk never unpacks past the size its manifest declares.

A zstd frame may declare any content size; one-shot decompression trusts it and allocates
that much. Here the output streams to the disk file a piece at a time and stops one byte
past the declared size, and frames that need a larger window than meda's compressor ever
uses are refused, so memory stays small whatever a chunk claims.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import zstandard

from meda_core.plugin import BackendError

MAX_WINDOW = 16 * 1024 * 1024  # zstd levels 1..19 use windows of at most 8 MiB
_PIECE = 1024 * 1024


def chunk(blob: Path, fd: int, offset: int, size: int) -> str:
    """Unpack ``blob`` into ``fd`` at ``offset``; the digest of its ``size`` bytes.

    More than ``size`` bytes, fewer, or a frame that is not zstd: refused.
    """
    hasher = hashlib.sha256()
    written = 0
    unpacker = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    try:
        with (
            blob.open("rb") as source,
            unpacker.stream_reader(source, read_across_frames=True) as reader,
        ):
            while piece := reader.read(min(_PIECE, size + 1 - written)):
                if written + len(piece) > size:
                    raise BackendError(
                        f"disk chunk unpacks past its declared {size} bytes; refusing it",
                        expected=size,
                    )
                os.pwrite(fd, piece, offset + written)
                hasher.update(piece)
                written += len(piece)
    except zstandard.ZstdError as exc:
        raise BackendError(f"disk chunk does not unpack: {exc}") from None
    if written != size:
        raise BackendError(f"disk chunk unpacks to {written} bytes, not its declared {size}")
    return f"sha256:{hasher.hexdigest()}"
