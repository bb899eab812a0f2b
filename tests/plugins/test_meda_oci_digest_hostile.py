"""The whole-disk digest of a pull under a hostile registry and a hostile environment:
failing and cancelled read-backs, odd chunk layouts, short reads, every landing order."""

from __future__ import annotations

import errno
import functools
import hashlib
import mmap
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_oci import directio, diskdigest, unpack
from meda_oci.diskdigest import DiskDigest
from meda_oci.unpack import ChunkWriter
from tests.plugins.conftest import HostileRegistry, trickle
from tests.plugins.test_meda_oci_disk import disk_fds  # noqa: F401 (a fixture)
from tests.plugins.test_meda_oci_hostile import meda_image, ref

MiB = 1024 * 1024
WRITE = unpack.WRITE


@pytest.fixture
def buffers(monkeypatch: pytest.MonkeyPatch) -> list[mmap.mmap]:
    """Every buffer ``directio.buffer`` hands out from now on."""
    made: list[mmap.mmap] = []
    plain = directio.buffer

    def recorded(size: int) -> mmap.mmap:
        made.append(plain(size))
        return made[-1]

    monkeypatch.setattr(directio, "buffer", recorded)
    return made


@pytest.fixture
def unhandled(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Exceptions that end a thread unhandled, from now on."""
    caught: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: caught.append(hook.exc_value))
    return caught


@pytest.fixture
def nothing_left(buffers: list[mmap.mmap], unhandled: list[BaseException]) -> Iterator[None]:
    """Once the test is done: no thread ended unhandled, no digest thread is left and every
    buffer a writer or the digest took is closed."""
    yield
    assert unhandled == [] and digest_threads() == []
    assert [b for b in buffers if not b.closed] == []


def digest_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("disk-digest")]


def _failing_reads(monkeypatch: pytest.MonkeyPatch, fd: int, how: str, at: int) -> list[int]:
    """Reads from ``at`` on fail (EIO), or find the file cut short there."""
    plain, reads = os.preadv, []

    def preadv(target: int, views: list[memoryview], offset: int) -> int:
        reads.append(offset)
        if offset >= at:
            if how == "eio":
                del views  # as os.preadv keeps nothing it was given
                raise OSError(errno.EIO, "Input/output error")
            os.ftruncate(fd, at + 100)  # another process cuts the file short
        return plain(target, views, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    return reads


@pytest.mark.parametrize("how", ["eio", "shrinks"])
def test_a_failing_read_back_ends_the_digest_and_frees_every_buffer(
    disk_fds: tuple[Path, int, int | None],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    buffers: list[mmap.mmap],
    unhandled: list[BaseException],
    how: str,
) -> None:
    _, fd, direct = disk_fds
    size = 6 * WRITE
    os.ftruncate(fd, size)
    os.pwrite(fd, os.urandom(size), 0)
    reads = _failing_reads(monkeypatch, fd, how, 2 * WRITE)
    whole = DiskDigest(fd, size, size, direct, hold=2)
    with memoryview(os.urandom(WRITE)) as view:
        whole.offer(0, 5 * WRITE, view)  # held ahead, never reached
    whole.ready(0)
    with pytest.raises(OSError, match=r"Input/output error|disk file ended"):
        whole.result()
    whole.cancel()
    assert reads and unhandled == []  # the thread ended by handing the error over
    assert len(buffers) == 3 and all(b.closed for b in buffers)
    assert digest_threads() == []
    with memoryview(os.urandom(WRITE)) as view:  # a writer still going holds nothing more
        whole.offer(0, 4 * WRITE, view)
    assert len(buffers) == 3


def test_cancel_while_a_piece_is_read_back_stops_the_digest_promptly(
    disk_fds: tuple[Path, int, int | None],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    buffers: list[mmap.mmap],
    unhandled: list[BaseException],
) -> None:
    _, fd, direct = disk_fds
    size = 16 * WRITE
    os.ftruncate(fd, size)
    os.pwrite(fd, os.urandom(size), 0)
    plain, reads = os.preadv, []
    reading, go = threading.Event(), threading.Event()

    def preadv(target: int, views: list[memoryview], offset: int) -> int:
        reads.append(offset)
        if len(reads) == 2:  # one piece hashed, the next in flight
            reading.set()
            go.wait(10)
        return plain(target, views, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    whole = DiskDigest(fd, size, size, direct)
    whole.ready(0)
    assert reading.wait(10)
    cancelling = threading.Thread(target=whole.cancel)
    cancelling.start()
    deadline = time.monotonic() + 10
    while not whole._cancelled and time.monotonic() < deadline:
        time.sleep(0.001)
    go.set()  # the read in flight lands in a buffer still open
    cancelling.join(10)
    assert not cancelling.is_alive()
    assert len(reads) <= 3  # not the rest of the chunk
    assert unhandled == [] and digest_threads() == []
    assert buffers and all(b.closed for b in buffers)


# ---- exactly the disk's sha256, whatever the order ----


@pytest.fixture
def small_writes(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pieces of 64 KiB instead of 4 MiB (still whole blocks), for many of them quickly."""
    write = 64 * 1024
    monkeypatch.setattr(unpack, "WRITE", write)
    monkeypatch.setattr(unpack, "_ZEROS", bytes(write))
    monkeypatch.setattr(diskdigest, "WRITE", write)
    monkeypatch.setattr(diskdigest, "_ZEROS", memoryview(bytes(write)))
    return write


def _short_reads(monkeypatch: pytest.MonkeyPatch, rng: random.Random) -> None:
    """Reads that return fewer bytes than asked, aligned or not."""
    plain = os.preadv

    def preadv(target: int, views: list[memoryview], offset: int) -> int:
        view = views[0]
        cut = rng.choice([len(view), 4096, 8192, 1000, 1])
        with view[: min(cut, len(view))] as part:
            return plain(target, [part], offset)

    monkeypatch.setattr(os, "preadv", preadv)


def _layout(rng: random.Random, write: int) -> tuple[int, int, dict[int, bytes]]:
    """A chunk size and disk size that are not multiples of a piece or a block, and
    chunks of random data, zero pieces, declared shorter than the chunk size, or absent."""
    chunk_size = rng.choice([3 * write + 4097, 2 * write, write + 1, 5 * write - 512])
    count = rng.randint(2, 7)
    size = (count - 1) * chunk_size + rng.randint(1, chunk_size)
    chunks: dict[int, bytes] = {}
    for index in range(count):
        room = min(chunk_size, size - index * chunk_size)
        kind = rng.choice(["data", "data", "zeros", "short", "absent"])
        if kind == "absent":
            continue
        length = room if kind != "short" else rng.randint(1, room)
        pieces = bytearray(os.urandom(length))
        if kind == "zeros" or rng.random() < 0.5:  # a zero stretch, left as a hole
            at = rng.randrange(0, length)
            pieces[at : at + 2 * write] = bytes(len(pieces[at : at + 2 * write]))
        chunks[index] = bytes(pieces)
    return chunk_size, size, chunks


def _pull_like(
    fd: int,
    direct: int | None,
    size: int,
    chunk_size: int,
    chunks: dict[int, bytes],
    hold: int,
    rng: random.Random,
    workers: int,
) -> DiskDigest:
    """What a pull does: writers in threads, in a random order, each a chunk at a time."""
    whole = DiskDigest(fd, size, chunk_size, direct, hold)
    for index in range(whole.count):
        if index not in chunks:
            whole.ready(index)
    order = list(chunks)
    rng.shuffle(order)
    delays = {index: rng.choice([0, 0, 0.001, 0.005]) for index in order}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        while True:
            with lock:
                if not order:
                    return
                index = order.pop()
            data = chunks[index]
            packed = zstandard.ZstdCompressor().compress(data)
            with ChunkWriter(
                fd,
                index * chunk_size,
                len(data),
                True,
                functools.partial(whole.written, index),
                direct,
                functools.partial(whole.offer, index),
            ) as writer:
                for at in range(0, len(packed), 7000):
                    writer.feed(packed[at : at + 7000])
                    time.sleep(delays[index])
                writer.finish()
            whole.ready(index)

    def guarded() -> None:
        try:
            one()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    return whole


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("use_direct", [True, False])
def test_the_digest_is_the_disks_sha256_in_any_landing_order(
    disk_fds: tuple[Path, int, int | None],  # noqa: F811
    small_writes: int,
    monkeypatch: pytest.MonkeyPatch,
    unhandled: list[BaseException],
    seed: int,
    use_direct: bool,
) -> None:
    path, fd, direct = disk_fds
    if use_direct and direct is None:
        pytest.skip("the file system under tmp_path refuses O_DIRECT")
    rng = random.Random(seed)
    chunk_size, size, chunks = _layout(rng, small_writes)
    os.ftruncate(fd, size)
    if seed % 3 == 0:
        _short_reads(monkeypatch, rng)
    hold = rng.choice([0, 1, 3, 1000])
    whole = _pull_like(
        fd,
        direct if use_direct else None,
        size,
        chunk_size,
        chunks,
        hold,
        rng,
        rng.choice([1, 3, 4]),
    )
    disk = bytearray(size)
    for index, data in chunks.items():
        disk[index * chunk_size : index * chunk_size + len(data)] = data
    assert path.read_bytes() == disk
    assert whole.result() == "sha256:" + hashlib.sha256(disk).hexdigest()
    assert whole.held_peak <= hold
    assert unhandled == [] and digest_threads() == []


# ---- whole pulls from a hostile registry ----


@pytest.mark.usefixtures("four_chunks_at_once", "nothing_left")
def test_a_pull_of_odd_chunks_holds_at_most_its_budget_and_leaves_nothing(
    hostile: Callable[[], HostileRegistry],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    watched_digests: list[DiskDigest],
) -> None:
    """Chunks of 1 MiB and a bit (no multiple of a piece or a block), an unaligned disk,
    zero stretches, 2 pieces of budget: the digest is the disk's, nothing is left over."""
    monkeypatch.setenv("MEDA_OCI_HOLD_MEMORY", str(2 * WRITE + WRITE // 2))
    digests = watched_digests
    registry = hostile()
    disk = os.urandom(5 * MiB) + bytes(3 * MiB) + os.urandom(2 * MiB + 1234)
    meda_image(registry, disk, chunk_size=MiB + 4097)
    image = Meda(Settings(home=tmp_path / "home")).images.pull(ref(registry))
    assert image.disk is not None and image.disk.read_bytes() == disk
    assert hashlib.sha256(disk).hexdigest() in str(image.disk)  # stored under its digest
    assert digests[0].held_peak <= 2


@pytest.mark.usefixtures("four_chunks_at_once", "nothing_left")
def test_a_deadline_cut_pull_leaves_no_digest_thread_or_buffer(
    hostile: Callable[[], HostileRegistry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDA_OCI_DEADLINE", "2")
    registry = hostile()
    disk = os.urandom(4 * MiB)
    manifest = meda_image(registry, disk, chunk_size=MiB)
    first = manifest["layers"][0]
    packed = zstandard.ZstdCompressor().compress(disk[:MiB])  # chunk 0's blob, as served
    # chunk 0 never finishes in time: the chunks after it are held or left to read back
    registry.reply(
        "GET", f"/v2/meda/evil/blobs/{first['digest']}", trickle(packed, 0.01), length=len(packed)
    )
    started = time.monotonic()
    with pytest.raises(Exception, match="MEDA_OCI_DEADLINE"):
        Meda(Settings(home=tmp_path / "home")).images.pull(ref(registry))
    assert time.monotonic() - started < 6
