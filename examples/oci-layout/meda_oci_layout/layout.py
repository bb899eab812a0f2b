"""One OCI image layout folder (``oci-layout``, ``index.json``, ``blobs/sha256/``), read as
if hostile: a digest is ``sha256:`` and 64 hex digits before it names a file, every size
is bounded, every blob is checked against its digest, and no path leads out of the root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from meda_core.plugin import BackendError, content, exclusive

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
MAX_JSON = 4 * 1024 * 1024  # an index, a manifest or a config
BLOCK = 1024 * 1024
_SEGMENT = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

#: Told the bytes of each block as it passes.
Meter = Callable[[int], None]


#: The digest and size checks, with errors that say where the content came from.
CHECKS = content.Checks("the OCI layout holds")
invalid, checked_digest, checked_size = CHECKS.invalid, CHECKS.digest, CHECKS.size


def checked_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise BackendError(f"invalid tag {tag[:80]!r}")
    return tag


def descriptor(media_type: str, digest: str, size: int, **annotations: str) -> dict[str, Any]:
    found: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        found["annotations"] = annotations
    return found


def checked_descriptor(value: Any, limit: int, what: str) -> dict[str, Any]:
    """A descriptor whose media type is a string and whose digest and size are sound."""
    if not isinstance(value, dict) or not isinstance(value.get("mediaType"), str):
        raise invalid(f"{what} descriptor", value)
    checked_digest(value.get("digest"), f"{what} digest")
    checked_size(value.get("size"), limit, f"{what} size")
    return value


class Layout:
    """The layout of one repository: ``root/<org>/<name>``."""

    def __init__(self, root: Path, repository: str) -> None:
        segments = repository.split("/")
        if not all(_SEGMENT.fullmatch(s) for s in segments):
            raise BackendError(f"invalid repository {repository[:80]!r}")
        self.root = root.resolve()
        self.path = self.root.joinpath(*segments)

    # ---- paths ----

    def _inside(self, path: Path) -> Path:
        """``path`` if it (links followed) stays under the root."""
        if not path.resolve().is_relative_to(self.root):
            raise BackendError(f"{path} leads out of the OCI layout root {self.root}")
        return path

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = checked_digest(digest).split(":")
        return self._inside(self.path / "blobs" / algorithm / hex_digest)

    def exists(self) -> bool:
        return self._inside(self.path / "index.json").is_file()

    # ---- reading ----

    def _blocks(self, path: Path, limit: int) -> Iterator[bytes]:
        """The bytes of ``path`` (not a symbolic link), at most ``limit`` of them."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO never blocks
        try:
            fd = os.open(self._inside(path), flags)
        except FileNotFoundError:
            raise BackendError(f"{path.name} is missing from the OCI layout") from None
        except OSError as e:
            raise BackendError(f"cannot read {path} in the OCI layout: {e}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise invalid(f"file {path.name} (not a regular file)", path.name)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            read = 0
            while block := f.read(BLOCK):
                read += len(block)
                if read > limit:
                    raise invalid(f"file {path.name} (larger than {limit} bytes)", read)
                yield block

    def _verified(self, digest: str, size: int | None, limit: int) -> Iterator[bytes]:
        """The blob's bytes; after the last, a check of its size and digest."""
        hasher, count = hashlib.sha256(), 0
        for block in self._blocks(self.blob_path(digest), limit if size is None else size):
            hasher.update(block)
            count += len(block)
            yield block
        if size is not None and count != size:
            raise invalid(f"blob {digest} ({count} bytes, not {size})", count)
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise BackendError(f"blob {digest} failed verification: its bytes differ")

    def read_blob(self, digest: str, size: int | None = None, limit: int = MAX_JSON) -> bytes:
        """A small blob (a manifest or a config), verified."""
        return b"".join(self._verified(digest, size, limit))

    def copy_blob(self, digest: str, size: int, dest: Path, meter: Meter) -> Path:
        """The blob, verified, into ``dest`` (zero blocks left as holes)."""
        try:
            with dest.open("wb") as out:
                for block in self._verified(digest, size, size):
                    _write_sparse(out, block)
                    meter(len(block))
                out.truncate(size)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return dest

    def json_of(self, path: Path, what: str) -> Any:
        return parse_json(b"".join(self._blocks(path, MAX_JSON)), what)

    def index(self) -> list[dict[str, Any]]:
        """The manifests ``index.json`` lists."""
        index = self.json_of(self.path / "index.json", "index")
        manifests = index.get("manifests", []) if isinstance(index, dict) else None
        if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
            raise invalid("index", index)
        return manifests

    def find(self, tag: str) -> dict[str, Any] | None:
        """The descriptor of the manifest tagged ``tag``, checked; None if there is none."""
        if not self.exists():
            return None
        for entry in self.index():
            if _tagged(entry, tag):
                return checked_descriptor(entry, MAX_JSON, "manifest")
        return None

    # ---- writing ----

    def create(self) -> None:
        """The folders and ``oci-layout`` file, if they are not there yet."""
        blobs = self._inside(self.path / "blobs" / "sha256")
        blobs.mkdir(parents=True, exist_ok=True)
        marker = self._inside(self.path / "oci-layout")
        if not marker.exists():
            self._replace(marker, json.dumps(LAYOUT_VERSION).encode())

    def add_file(self, source: Path, meter: Meter) -> tuple[str, int]:
        """Copy ``source`` in as a blob; its digest and size."""
        blobs = self._inside(self.path / "blobs" / "sha256")
        fd, name = tempfile.mkstemp(dir=blobs, prefix=".incoming-")
        tmp, hasher, size = Path(name), hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as f:
                while block := f.read(BLOCK):
                    hasher.update(block)
                    _write_sparse(out, block)
                    size += len(block)
                    meter(len(block))
                out.truncate(size)
            digest = f"sha256:{hasher.hexdigest()}"
            tmp.replace(self.blob_path(digest))
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    def add_bytes(self, data: bytes) -> tuple[str, int]:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        self._replace(self.blob_path(digest), data)
        return digest, len(data)

    def tag(self, manifest: dict[str, Any], tag: str) -> None:
        """List ``manifest`` in the index as ``tag``, in place of what had that tag."""
        entry = {**manifest, "annotations": {REF_NAME: checked_tag(tag)}}
        with exclusive(self._inside(self.path / ".index.lock")):
            listed = self.index() if self.exists() else []
            others = [m for m in listed if not _tagged(m, tag)]
            index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [*others, entry]}
            self._replace(self.path / "index.json", json.dumps(index, indent=2).encode())

    def _replace(self, path: Path, data: bytes) -> None:
        """Write ``path`` whole or not at all (a temporary file renamed over it)."""
        fd, name = tempfile.mkstemp(dir=self._inside(path.parent), prefix=f".{path.name}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            Path(name).replace(self._inside(path))
        finally:
            Path(name).unlink(missing_ok=True)


def parse_json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid(f"{what} (not JSON)", raw[:40]) from None


def _write_sparse(out: BinaryIO, block: bytes) -> None:
    """Write ``block``, or skip over it if it is all zeros (a hole); the caller truncates."""
    if block.count(0) == len(block):
        out.seek(len(block), os.SEEK_CUR)
    else:
        out.write(block)


def _tagged(entry: dict[str, Any], tag: str) -> bool:
    notes = entry.get("annotations")
    return isinstance(notes, dict) and notes.get(REF_NAME) == tag
