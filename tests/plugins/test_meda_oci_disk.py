"""How the oci plugin writes a pulled disk: around the page cache, hashed from memory."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from meda_core.errors import BackendError
from meda_core.facade import Meda
from meda_core.images.blobs import sha256_file
from meda_core.settings import Settings
from meda_oci import directio
from meda_oci.diskdigest import DiskDigest
from meda_oci.unpack import WRITE, ChunkWriter
from tests.plugins.conftest import HostileRegistry
from tests.plugins.test_meda_oci_hostile import meda_image, ref

MiB = 1024 * 1024


@pytest.fixture
def disk_fds(tmp_path: Path) -> Iterator[tuple[Path, int, int | None]]:
    """A fresh sparse file, its descriptor, and its ``O_DIRECT`` one where there is one."""
    path = tmp_path / "disk"
    path.touch()
    fd, direct = os.open(path, os.O_RDWR), directio.open_direct(path)
    yield path, fd, direct
    if direct is not None:
        os.close(direct)
    os.close(fd)


def _unpack(fd: int, direct: int | None, offset: int, data: bytes, holes: bool) -> None:
    writer = ChunkWriter(fd, offset, len(data), holes, direct=direct)
    packed = zstandard.ZstdCompressor().compress(data)
    for start in range(0, len(packed), 100_000):
        writer.feed(packed[start : start + 100_000])
    writer.finish()


@pytest.mark.parametrize("use_direct", [True, False])
def test_chunks_land_whole_with_or_without_direct_io(
    disk_fds: tuple[Path, int, int | None], use_direct: bool
) -> None:
    path, fd, direct = disk_fds
    if use_direct and direct is None:
        pytest.skip("the file system under tmp_path refuses O_DIRECT")
    direct = direct if use_direct else None
    size = 2 * WRITE + 3 * MiB + 1234  # an unaligned tail goes through the plain descriptor
    os.ftruncate(fd, size)
    first = os.urandom(WRITE) + bytes(WRITE)  # the zero piece stays a hole
    tail = os.urandom(size - len(first))
    _unpack(fd, direct, 0, first, holes=True)
    _unpack(fd, direct, len(first), tail, holes=True)
    assert path.read_bytes() == first + tail
    assert os.lseek(fd, WRITE, os.SEEK_HOLE) == WRITE  # holes left where zeros were


def test_direct_io_is_declined_where_the_file_system_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_open = os.open

    def refusing(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:  # what a file system without O_DIRECT answers
            raise OSError(errno.EINVAL, "Invalid argument")
        return plain_open(path, flags, *args)

    path = tmp_path / "disk"
    path.touch()
    monkeypatch.setattr(os, "open", refusing)
    assert directio.open_direct(path) is None  # the plain path, not a failed pull
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError):  # other errors are not taken for a refusal
        directio.open_direct(tmp_path / "missing")


def test_unaligned_direct_writes_go_through_the_plain_descriptor(
    disk_fds: tuple[Path, int, int | None],
) -> None:
    path, fd, direct = disk_fds
    os.ftruncate(fd, 3 * directio.ALIGN)
    data = os.urandom(directio.ALIGN + 7)
    with memoryview(data) as view:
        directio.pwrite(fd, direct, view, 5)  # O_DIRECT would refuse this with EINVAL
        refused = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(OSError):  # other errors than EINVAL are not swallowed
                directio.pwrite(fd, refused, view[: directio.ALIGN], 0)
        finally:
            os.close(refused)
    assert path.read_bytes()[5 : 5 + len(data)] == data


def test_bytes_offered_in_order_are_hashed_without_reading_them_back(
    disk_fds: tuple[Path, int, int | None],
) -> None:
    path, fd, direct = disk_fds
    chunk, size = 2 * MiB, 4 * MiB
    os.ftruncate(fd, size)
    pieces = [os.urandom(MiB) for _ in range(4)]
    whole = DiskDigest(fd, size, chunk, direct)
    for index, start in ((0, 0), (0, MiB)):  # chunk 0, in order: taken from memory
        with memoryview(pieces[index * 2 + start // MiB]) as view:
            whole.offer(index, start, view)
    whole.ready(0)
    # chunk 1 is offered out of order first (ignored), then on disk and read back
    with memoryview(pieces[3]) as view:
        whole.offer(1, MiB, view)
    os.pwrite(fd, pieces[2] + pieces[3], chunk)
    whole.ready(1)
    # chunk 0 never reached the file: the digest is of what was offered in order
    assert whole.result() == "sha256:" + hashlib.sha256(b"".join(pieces)).hexdigest()
    assert sha256_file(path) != whole.result()


def test_the_disk_digest_reads_back_through_direct_io(
    disk_fds: tuple[Path, int, int | None],
) -> None:
    path, fd, direct = disk_fds
    if direct is None:
        pytest.skip("the file system under tmp_path refuses O_DIRECT")
    chunk, size = MiB, 3 * MiB + 4321  # an unaligned tail is read the plain way
    os.ftruncate(fd, size)
    whole = DiskDigest(fd, size, chunk, direct)
    for index in (2, 0, 3, 1):  # 1 stays a hole
        if index != 1:
            os.pwrite(fd, os.urandom(min(chunk, size - index * chunk)), index * chunk)
        whole.ready(index)
    assert whole.result() == sha256_file(path)


def test_pieces_offered_ahead_are_hashed_from_memory_within_the_budget(
    disk_fds: tuple[Path, int, int | None],
) -> None:
    _, fd, direct = disk_fds
    size = 5 * WRITE
    os.ftruncate(fd, size)
    offered = [os.urandom(WRITE) for _ in range(5)]
    whole = DiskDigest(fd, size, WRITE, direct, hold=2)
    for index in (1, 2, 3, 4):  # ahead of chunk 0: two held, two left to be read back
        with memoryview(offered[index]) as view:
            whole.offer(index, 0, view)
    on_disk = [os.urandom(WRITE) for _ in range(5)]  # what the file holds differs
    os.pwrite(fd, b"".join(on_disk), 0)
    for index in (4, 3, 2, 1):
        whole.ready(index)
    with memoryview(offered[0]) as view:
        whole.offer(0, 0, view)
    whole.ready(0)
    expected = offered[:3] + on_disk[3:]  # held pieces from memory, the rest read back
    assert whole.result() == "sha256:" + hashlib.sha256(b"".join(expected)).hexdigest()
    assert whole.held_peak == 2


def test_zeros_left_as_holes_are_not_held(disk_fds: tuple[Path, int, int | None]) -> None:
    _, fd, direct = disk_fds
    os.ftruncate(fd, 2 * WRITE)
    whole = DiskDigest(fd, 2 * WRITE, WRITE, direct, hold=2)
    with memoryview(bytes(WRITE)) as view:
        whole.offer(1, 0, view, keep=False)
    whole.ready(1)
    whole.ready(0)
    assert whole.result() == "sha256:" + hashlib.sha256(bytes(2 * WRITE)).hexdigest()
    assert whole.held_peak == 0


@pytest.mark.usefixtures("four_chunks_at_once")
def test_a_failing_chunk_ends_a_pull_promptly_while_others_hold_pieces(
    hostile: Callable[[], HostileRegistry],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    watched_digests: list[DiskDigest],
) -> None:
    monkeypatch.setenv("MEDA_OCI_HOLD_MEMORY", str(8 * WRITE))
    digests = watched_digests
    registry = hostile()
    manifest = meda_image(registry, os.urandom(4 * 8 * MiB), chunk_size=8 * MiB)
    garbage = os.urandom(4096)  # a blob that is what its digest says, and no zstd frame

    def late() -> Iterator[bytes]:  # sent once the chunks after it hold pieces
        deadline = time.monotonic() + 10
        while not (digests and digests[0].held_peak >= 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield garbage

    digest = "sha256:" + hashlib.sha256(garbage).hexdigest()
    for method in ("GET", "HEAD"):
        registry.reply(method, f"/v2/meda/evil/blobs/{digest}", late(), length=len(garbage))
    manifest["layers"][0].update(digest=digest, size=len(garbage))
    registry.manifest(manifest)
    meda = Meda(Settings(home=tmp_path / "home"))
    started = time.monotonic()
    with pytest.raises(BackendError, match="does not unpack"):
        meda.images.pull(ref(registry))
    assert time.monotonic() - started < 8
    assert 3 <= digests[0].held_peak <= 8  # MEDA_OCI_HOLD_MEMORY at most
    assert not [t for t in threading.enumerate() if t.name.startswith("disk-digest")]
    assert meda.images.list() == []
