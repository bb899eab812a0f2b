"""The whole disk's digest, taken in order right behind chunks that land out of order.

The writer of the bytes next in order hashes them from its own buffer as it writes them;
what is written ahead of that is copied into one of a few spare buffers (a bounded budget)
and hashed from there when its turn comes; only what lands ahead while the budget is spent
is read back, as soon as the bytes before it are hashed, the next piece read while one is
hashed. No writer ever waits for the digest. Where the writers bypass the page cache, so do
these reads.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from meda_oci import directio
from meda_oci.unpack import WRITE

_ZEROS = memoryview(bytes(WRITE))


class _Cancelled(Exception):
    """The digest was cancelled while it hashed a range: the rest is not read."""


class DiskDigest:
    """Hashes ``fd``'s ``size`` bytes in order, as writers offer them or as :meth:`written`
    and :meth:`ready` release them to be read back."""

    def __init__(
        self, fd: int, size: int, chunk_size: int, direct: int | None = None, hold: int = 0
    ) -> None:
        """``direct``: an ``O_DIRECT`` descriptor on the same file, for aligned reads.
        ``hold``: at most this many pieces offered ahead of the position are kept in
        memory (``WRITE`` bytes each) to be hashed from there instead of read back."""
        self._fd, self._size, self._chunk_size, self._direct = fd, size, chunk_size, direct
        self._hold = hold
        self._spare: list[mmap.mmap] = []  # allocated buffers no piece is in
        self._allocated = 0
        self._held: dict[int, tuple[mmap.mmap, int]] = {}  # disk offset -> buffer, length
        self.held_peak = 0  # the most pieces held at once
        self.count = (size + chunk_size - 1) // chunk_size
        self._written: dict[int, int] = {}  # chunk -> bytes of it written so far
        self._ready: set[int] = set()
        self._hasher = hashlib.sha256()
        self._position = 0  # bytes of the disk hashed so far
        self._reading = False  # the thread is hashing from _position on, read back
        self._cancelled = False
        self._error: BaseException | None = None
        self._digest: str | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="disk-digest", daemon=True)
        self._thread.start()

    def offer(self, index: int, start: int, data: memoryview, keep: bool = True) -> None:
        """``data`` is what chunk ``index`` holds from ``start`` on, offered before it is
        written: hashed now if it is next in order, else copied into a spare buffer if
        ``keep`` and the budget allows, else ignored (read back once written). ``keep``
        is False for zeros left as holes: those are hashed without being read."""
        offset = index * self._chunk_size + start
        with self._changed:
            if not self._reading and self._position == offset:
                self._hasher.update(data)
                self._position += len(data)
                self._changed.notify()
                return
            spare = self._take_spare() if keep and len(data) <= WRITE else None
        if spare is None:
            return
        spare[: len(data)] = data  # outside the lock: the range is not final before written()
        with self._changed:
            ended = self._hold == 0  # the digest ended meanwhile: nobody would close it
            if not ended:
                self._held[offset] = (spare, len(data))
                self.held_peak = max(self.held_peak, len(self._held))
        if ended:
            spare.close()

    def _take_spare(self) -> mmap.mmap | None:
        """A buffer for a piece held ahead (None: the budget is spent); under the lock."""
        if self._spare:
            return self._spare.pop()
        if self._allocated < self._hold:
            self._allocated += 1
            return directio.buffer(WRITE)
        return None

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
        buffers = (directio.buffer(WRITE), directio.buffer(WRITE))
        views = (memoryview(buffers[0]), memoryview(buffers[1]))
        reader = ThreadPoolExecutor(1, thread_name_prefix="disk-digest-read")
        try:
            while (claimed := self._claim()) is not None:
                start, end = claimed
                self._hash_range((reader, views), start, end)
                with self._changed:
                    self._position, self._reading = end, False
            if not self._cancelled:
                self._digest = f"sha256:{self._hasher.hexdigest()}"
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to result()
            self._error = exc
        finally:
            with self._changed:
                unused = self._spare + [held for held, _ in self._held.values()]
                self._spare, self._held, self._hold = [], {}, 0  # no more pieces are kept
            for spare in unused:
                spare.close()
            reader.shutdown()  # no read is still going into a buffer closed here
            for view, buffer in zip(views, buffers, strict=True):
                view.release()
                buffer.close()

    def _claim(self) -> tuple[int, int] | None:
        """The range from the position on that is final and not yet hashed, to be read
        back (None: the whole disk is hashed, or the digest was cancelled)."""
        with self._changed:
            self._changed.wait_for(self._releasable)
            if self._cancelled or self._position >= self._size:
                return None
            self._reading = True
            return self._position, self._final_end()

    def _releasable(self) -> bool:
        return self._cancelled or self._position >= self._size or self._final_end() > self._position

    def _final_end(self) -> int:
        """Where the final bytes that begin in the position's chunk end, from its start."""
        index = self._position // self._chunk_size
        start = index * self._chunk_size
        if index in self._ready:
            return min(start + self._chunk_size, self._size)
        return start + self._written.get(index, 0)

    def _hash_range(self, reading: _Reading, start: int, end: int) -> None:
        """Hash ``start`` to ``end``: pieces held in memory from there, the rest from the
        disk. Every piece held in the range was held before the range became final."""
        while start < end:
            held = self._next_held(start, end)
            if held == start:
                start = self._hash_held(start)
            else:
                self._hash_disk(reading, start, held)
                start = held

    def _next_held(self, start: int, end: int) -> int:
        """Where the first piece held at or after ``start`` begins (``end``: none before)."""
        with self._changed:
            return min((o for o in self._held if start <= o < end), default=end)

    def _hash_held(self, start: int) -> int:
        """Hash the piece held at ``start``, give its buffer back; where it ends."""
        with self._changed:
            held, length = self._held.pop(start)
        with memoryview(held) as view:
            self._hasher.update(view[:length])
        with self._changed:
            self._spare.append(held)
        return start + length

    def _hash_disk(self, reading: _Reading, start: int, end: int) -> None:
        """Hash ``start`` to ``end`` from the disk: holes as zeros without reading them (a
        read would fill the page cache with zeros), data read back as it was written."""
        while start < end:
            data = _next_data(self._fd, start, end)
            while start < data:
                self._check_cancelled()
                step = min(WRITE, data - start)
                self._hasher.update(_ZEROS[:step] if step < WRITE else _ZEROS)
                start += step
            hole = min(os.lseek(self._fd, start, os.SEEK_HOLE), end) if start < end else end
            self._hash_data(reading, start, hole)
            start = hole

    def _hash_data(self, reading: _Reading, start: int, end: int) -> None:
        """Hash ``start`` to ``end`` read from the disk, a piece at a time, the next piece
        read (by ``reading``'s thread, into its other buffer) while one is hashed."""
        reader, views = reading
        pieces = [(at, min(WRITE, end - at)) for at in range(start, end, WRITE)]
        pending = reader.submit(self._read_piece, views[0], *pieces[0]) if pieces else None
        for number, (_, length) in enumerate(pieces):
            assert pending is not None
            pending.result()
            self._check_cancelled()  # nothing is being read now
            if number + 1 < len(pieces):
                following = views[(number + 1) % 2]
                pending = reader.submit(self._read_piece, following, *pieces[number + 1])
            self._hasher.update(views[number % 2][:length])

    def _check_cancelled(self) -> None:
        if self._cancelled:  # a cancelled pull does not wait for a whole chunk's range
            raise _Cancelled

    def _read_piece(self, view: memoryview, start: int, length: int) -> None:
        """``length`` bytes at ``start``, read into ``view``."""
        done = 0
        while done < length:
            # released even when the read fails: a failure's traceback keeps _read's frame,
            # and a view left there would keep the buffer from being closed (BufferError)
            with view[done:] as rest:
                done += self._read(rest, start + done, length - done)

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


_Reading = tuple[ThreadPoolExecutor, tuple[memoryview, memoryview]]


def _next_data(fd: int, start: int, end: int) -> int:
    """Where data begins at or after ``start`` (``end``: only a hole is left)."""
    try:
        return min(os.lseek(fd, start, os.SEEK_DATA), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return end
        raise
