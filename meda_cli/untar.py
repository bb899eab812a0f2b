"""Unpacking a guest's tar on the host without trusting it (nor tarfile's filters, which
older Pythons lack or get wrong): only directories and regular files, each path component
opened below the destination with ``O_NOFOLLOW``, modes without setuid/setgid/sticky, and
caps on bytes and members."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import IO

from meda_core.errors import InvalidRequest, PayloadTooLarge

MAX_MEMBERS = 1_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 64 * 1024


def unpack(source: IO[bytes], dest: Path, max_bytes: int) -> None:
    """Extract the tar streamed by ``source`` into ``dest`` (made). Anything but a
    directory or a regular file, a name that is absolute or has ``..``, more than
    ``max_bytes`` of file data and headers or :data:`MAX_MEMBERS` members: refused (InvalidRequest),
    what came before it stays."""
    dest.mkdir(parents=True, exist_ok=True)
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        total = 0
        with tarfile.open(fileobj=source, mode="r|") as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise InvalidRequest(f"the archive has over {MAX_MEMBERS} members")
                # Headers count too: a tar of empty folders is not free to unpack.
                total += (member.size if member.isreg() else 0) + tarfile.BLOCKSIZE
                if total > max_bytes:
                    raise PayloadTooLarge(
                        f"the archive holds over {max_bytes} bytes (MEDA_FILE_MAX_BYTES)",
                        limit=max_bytes,
                    )
                _extract(tar, member, root)
                # A stream's tarfile keeps every header otherwise (members: not typed).
                tar.members.clear()  # type: ignore[attr-defined]
    finally:
        os.close(root)


def _parts(name: str) -> list[str]:
    """``name``'s components below the destination; InvalidRequest if it would leave it."""
    path = PurePosixPath(name)
    parts = [part for part in path.parts if part not in ("", ".")]
    if path.is_absolute() or ".." in parts or "\0" in name:
        raise InvalidRequest(f"the archive names a path outside its folder: {name[:200]!r}")
    return parts


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, root: int) -> None:
    parts = _parts(member.name)
    mode = member.mode & 0o777  # never setuid, setgid or sticky
    if member.isdir():
        with _directory(root, parts):
            return
    if not member.isreg():
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise InvalidRequest(f"the archive holds a {kind}, refused: {member.name[:200]!r}")
    if not parts:
        raise InvalidRequest("the archive holds a file with no name")
    data = tar.extractfile(member)
    assert data is not None  # a regular file's data
    with _directory(root, parts[:-1]) as parent:
        _write(parent, parts[-1], data, mode)


@contextmanager
def _directory(root: int, parts: list[str]) -> Iterator[int]:
    """The directory ``parts`` below ``root``, made as needed, each component opened
    without following a symlink (one planted there is refused, not followed)."""
    current = os.dup(root)
    try:
        for part in parts:
            with suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=current)
            try:
                following = os.open(part, _DIR_FLAGS, dir_fd=current)
            except OSError as error:
                message = f"{part!r} in the destination is not a folder: {error.strerror}"
                raise InvalidRequest(message) from None
            os.close(current)
            current = following
        yield current
    finally:
        os.close(current)


def _write(parent: int, name: str, data: IO[bytes], mode: int) -> None:
    """A new file ``name`` in ``parent`` (whatever was there by that name is replaced,
    never written through) with ``data``, then ``mode``."""
    try:
        existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise InvalidRequest(f"{name!r} in the destination is a folder, not a file")
        os.unlink(name, dir_fd=parent)
    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
    with os.fdopen(fd, "wb") as file:
        while chunk := data.read(CHUNK):
            file.write(chunk)
        os.fchmod(file.fileno(), mode)
