"""Chunks a few at once: the first failure calls off what has not begun; writers are freed."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
import zstandard

from meda_oci import parallel
from meda_oci.parallel import each
from meda_oci.unpack import ChunkWriter

MiB = 1024 * 1024


def test_each_keeps_the_order_of_its_items() -> None:
    assert each(3, lambda n: n * n, range(10)) == [n * n for n in range(10)]


def test_the_first_failure_is_raised_and_items_not_begun_never_begin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even when the caller's thread is slow to hear of the failure (a loaded machine)."""

    def slow_to_hear(*args: Any, **kwargs: Any) -> Any:
        done = futures.wait(*args, **kwargs)
        time.sleep(0.2)
        return done

    monkeypatch.setattr(parallel, "wait", slow_to_hear)
    begun: list[int] = []
    release = threading.Event()

    def work(n: int) -> int:
        begun.append(n)
        if n == 1:
            raise ValueError("chunk 1 is bad")
        if n == 0:
            release.wait(5)  # still under way when chunk 1 fails
        return n

    def let_go() -> None:
        release.set()

    timer = threading.Timer(0.3, let_go)
    timer.start()
    with pytest.raises(ValueError, match="chunk 1 is bad"):
        each(2, work, range(50))
    timer.cancel()
    assert sorted(begun) == [0, 1], f"{len(begun)} of 50 items begun after the failure"


def test_a_chunk_writer_is_freed_once_closed_finished_or_not(tmp_path: Path) -> None:
    """The writer and its zstd unpacker refer to each other; a cycle through zstd's C
    object the collector cannot free, so a server would keep ~90 KiB per chunk pulled."""
    packed = zstandard.ZstdCompressor().compress(bytes(MiB))
    fd = os.open(tmp_path / "disk", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 2 * MiB)
    try:
        refs = []
        for index, finish in enumerate((True, False)):
            with ChunkWriter(fd, index * MiB, MiB, True) as writer:
                writer.feed(packed)
                if finish:
                    writer.finish()
            refs.append(weakref.ref(writer))
            del writer
        gc.collect()
        assert [ref() for ref in refs] == [None, None]
    finally:
        os.close(fd)
