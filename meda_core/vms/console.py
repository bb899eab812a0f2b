"""A VM's serial console log: read (its last lines, what is appended) and kept bounded on disk.

The hypervisor appends the guest's serial output to ``console.log`` in the VM's folder. Once
that passes ``MEDA_CONSOLE_MAX_BYTES`` it is copied to ``console.log.1`` (the previous copy
replaced, atomically) and truncated in place: the hypervisor opened it for appending, so its
next write lands at offset 0 (logrotate's ``copytruncate``; what the guest writes between
the copy and the truncation is lost). Both files are the owner's alone (0600). The bytes
are the guest's: nothing here interprets them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from meda_core.host.files import atomic_file
from meda_core.host.private import FILE_MODE, create_private
from meda_core.inputs.choices import MAX_CONSOLE_LINES
from meda_core.state.store import StateStore
from meda_core.vms.service import VMService

#: What one read of the log may return: lines, and bytes whatever the lines' length.
MAX_TAIL_LINES = MAX_CONSOLE_LINES
MAX_TAIL_BYTES = 4 * 1024 * 1024
#: Bytes read at a time, backwards (tail) or forwards (follow).
BLOCK = 64 * 1024


def rotated(log: Path) -> Path:
    """Where the previous part of ``log`` is kept after a rotation."""
    return log.with_name(log.name + ".1")


@dataclass(frozen=True)
class Position:
    """A place in a console log: the file (its inode) and the offset read up to."""

    inode: int
    offset: int


def _open(path: Path, flags: int = os.O_RDONLY) -> int | None:
    try:
        return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None


def _keep_private(fd: int) -> None:
    """Take group's and others' permissions off a log a hypervisor made readable."""
    if stat.S_IMODE(os.fstat(fd).st_mode) & ~FILE_MODE:
        os.fchmod(fd, FILE_MODE)


def rotate(log: Path, max_bytes: int) -> bool:
    """Rotate ``log`` if it is larger than ``max_bytes``; True when it was.

    Skipped (False) while another process rotates it or reads it (a shared ``flock``):
    the next look does it.
    """
    fd = _open(log, os.O_RDWR)
    if fd is None:
        return False
    try:
        _keep_private(fd)
        if os.fstat(fd).st_size <= max_bytes:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with atomic_file(rotated(log)) as tmp:
            out = create_private(tmp)
            try:
                _copy_all(fd, out)
            finally:
                os.close(out)
        os.ftruncate(fd, 0)
        return True
    finally:
        os.close(fd)  # and its lock


def _copy_all(src: int, dst: int) -> None:
    """Copy ``src`` to ``dst`` up to its end, including what is appended while copying."""
    offset = 0
    while True:
        copied = os.copy_file_range(src, dst, BLOCK * 16, offset, offset)
        if copied == 0:
            return
        offset += copied


def keep_private(log: Path) -> None:
    """0600 for ``log`` and its rotated copy, whatever made them."""
    for path in (log, rotated(log)):
        fd = _open(path)
        if fd is not None:
            try:
                _keep_private(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def _shared(log: Path) -> Iterator[int | None]:
    """``log`` open for reading, with a shared lock that holds rotations off meanwhile."""
    fd = _open(log)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def tail(log: Path, lines: int | None = None) -> tuple[bytes, Position]:
    """The last ``lines`` lines of ``log`` (None: as many as the caps allow), reading the
    rotated copy before it when the current file holds fewer; and where they end.

    Reads backwards in blocks, never more than :data:`MAX_TAIL_BYTES` and a block:
    at most :data:`MAX_TAIL_LINES` lines and :data:`MAX_TAIL_BYTES` bytes come back.
    """
    want = MAX_TAIL_LINES if lines is None else min(lines, MAX_TAIL_LINES)
    with _shared(log) as current:
        if current is None:
            return b"", Position(0, 0)
        info = os.fstat(current)
        end = Position(info.st_ino, info.st_size)
        if want <= 0:
            return b"", end
        older = _open(rotated(log))
        try:
            files = [fd for fd in (older, current) if fd is not None]
            data, whole = _read_back(files, want)
        finally:
            if older is not None:
                os.close(older)
    return _last_lines(data, want, whole), end


def _read_back(files: list[int], want: int) -> tuple[bytes, bool]:
    """The end of ``files`` read as one, back far enough for ``want`` lines or the byte
    cap; and whether that reached their very beginning."""
    blocks: list[bytes] = []
    size = newlines = 0
    for fd in reversed(files):
        position = os.fstat(fd).st_size
        while position > 0:
            if newlines > want or size >= MAX_TAIL_BYTES:
                return b"".join(reversed(blocks)), False
            length = min(BLOCK, position)
            position -= length
            block = os.pread(fd, length, position)
            blocks.append(block)
            size += len(block)
            newlines += block.count(b"\n")
    return b"".join(reversed(blocks)), True


def _last_lines(data: bytes, want: int, whole: bool) -> bytes:
    """The last ``want`` lines of ``data`` (a trailing line without its newline counts),
    within :data:`MAX_TAIL_BYTES`; a first line cut by the read is dropped."""
    if not whole and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]
    start = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(want):
        start = data.rfind(b"\n", 0, start)
        if start < 0:
            break
    data = data[start + 1 :] if start >= 0 else data
    if len(data) > MAX_TAIL_BYTES:
        data = data[-MAX_TAIL_BYTES:]
        cut = data.find(b"\n")
        data = data[cut + 1 :] if 0 <= cut < len(data) - 1 else data
    return data


class Follower:
    """What is appended to a console log after ``start``, read without blocking, across
    rotations; :meth:`read` raises :class:`EOFError` once ``gone`` says the VM is."""

    def __init__(
        self, log: Path, start: Position, gone: Callable[[], bool], max_bytes: int
    ) -> None:
        self._log, self._gone, self._max_bytes = log, gone, max_bytes
        self._inode, self._offset = start.inode, start.offset
        self._copy = _identity(rotated(log))

    def read(self) -> bytes:
        """What was appended since the last read (at most a few blocks); b"" when nothing.

        Rotates the log when it has grown too large (a follower without a server, whose
        watcher would, keeps it bounded too).
        """
        if self._gone():
            raise EOFError("the VM was deleted")
        info = _stat(self._log)
        if info is not None and info.st_size > self._max_bytes:
            rotate(self._log, self._max_bytes)
            info = _stat(self._log)
        if info is None:  # not started yet
            return b""
        copy = _identity(rotated(self._log))
        if (info.st_ino, info.st_size, copy) == (self._inode, self._offset, self._copy):
            return b""
        fd = _open(self._log)
        if fd is None:
            return b""
        try:
            return self._missed(os.fstat(fd), copy) + self._read_from(fd)
        finally:
            os.close(fd)

    def _missed(self, info: os.stat_result, copy: tuple[int, int] | None) -> bytes:
        """After a rotation: the rest of the copy, from where the last read ended."""
        if info.st_ino != self._inode:  # a new log (the VM made anew)
            self._inode, self._offset, self._copy = info.st_ino, 0, copy
            return b""
        if copy == self._copy:
            if info.st_size < self._offset:  # truncated by the hypervisor, not rotated
                self._offset = 0
            return b""
        self._copy, offset, self._offset = copy, self._offset, 0
        fd = _open(rotated(self._log))
        if fd is None:
            return b""
        try:
            return os.pread(fd, MAX_TAIL_BYTES, offset)
        finally:
            os.close(fd)

    def _read_from(self, fd: int) -> bytes:
        data = os.pread(fd, BLOCK * 4, self._offset)
        self._offset += len(data)
        return data


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` is: its inode and when it was made (an inode number alone may
    be reused by the next rotation's copy)."""
    info = _stat(path)
    return None if info is None else (info.st_ino, info.st_mtime_ns)


class Consoles:
    """The VMs' console logs, by VM name: what the API and the CLI read."""

    def __init__(self, vms: VMService, store: StateStore, max_bytes: int) -> None:
        self._vms, self._store, self._max_bytes = vms, store, max_bytes

    def tail(self, name: str, lines: int | None = None) -> bytes:
        """The last ``lines`` of VM ``name``'s console (a stopped VM's too); 404 no VM."""
        return tail(self._log(name), lines)[0]

    def follow(self, name: str, lines: int | None = None) -> tuple[bytes, Follower]:
        """The last ``lines`` of VM ``name``'s console, and what reads the rest as it
        comes, until the VM is deleted (its folder gone, or made anew)."""
        log = self._log(name)
        folder = _stat(log.parent)
        made = None if folder is None else folder.st_ino
        data, end = tail(log, lines)

        def gone() -> bool:
            now = _stat(log.parent)
            return now is None or now.st_ino != made

        return data, Follower(log, end, gone, self._max_bytes)

    def rotate_all(self) -> None:
        """Rotate every VM's console log that has grown too large (the watcher's sweep)."""
        for vm in self._store.list_vms():
            keep_private(vm.console_log)
            rotate(vm.console_log, self._max_bytes)

    def _log(self, name: str) -> Path:
        """VM ``name``'s console log, private and rotated if due (404: no such VM)."""
        log = self._vms.get(name).console_log
        keep_private(log)
        rotate(log, self._max_bytes)
        return log
