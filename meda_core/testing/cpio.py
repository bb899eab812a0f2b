"""A minimal writer (and, for tests, reader) of the ``newc`` cpio format of initramfs images."""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, without a leading slash
    mode: int  # file type and permission bits
    data: bytes = b""


def _header(entry: Entry, ino: int) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, 0, 0, len(name), 0)
    header = b"070701" + b"".join(f"{value:08X}".encode() for value in fields)
    return header + name + b"\0" * ((4 - (len(header) + len(name)) % 4) % 4)


def archive(entries: Iterable[Entry]) -> bytes:
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        out += _header(entry, ino)
        out += entry.data + b"\0" * ((4 - len(entry.data) % 4) % 4)
    return bytes(out)


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def file(path: str, source: Path | bytes, executable: bool = False) -> Entry:
    data = source if isinstance(source, bytes) else source.read_bytes()
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def write_initramfs(dest: Path, entries: Iterable[Entry]) -> None:
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(archive(entries), compresslevel=1))
    tmp.replace(dest)


def read_initramfs(path: Path) -> dict[str, Entry]:
    """The entries of a gzipped ``newc`` archive (as :func:`write_initramfs` makes), by path."""
    data, offset = gzip.decompress(path.read_bytes()), 0
    found: dict[str, Entry] = {}
    while True:
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        start = offset + 110
        name = data[start : start + name_size - 1].decode()
        start += name_size + (4 - (110 + name_size) % 4) % 4
        if name == "TRAILER!!!":
            return found
        found[name] = Entry(name, mode, data[start : start + size])
        offset = start + size + (4 - size % 4) % 4
