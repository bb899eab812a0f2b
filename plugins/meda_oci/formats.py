"""The image formats in registries: meda's own, and the one the Rust meda pushes.

A manifest and a config come from a registry, which may be hostile: they are checked
here, once, before anything else reads them. A digest is ``sha256:`` and 64 hex digits,
a size a bounded integer, and nothing from them is ever used as a path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from meda_core.plugin import BackendError, content
from meda_oci.settings import MAX_CHUNK_SIZE, MiB

ARTIFACT_TYPE = "application/vnd.meda.vm.v1"
CONFIG_TYPE = "application/vnd.meda.vm.config.v1+json"
CHUNK_TYPE = "application/vnd.meda.disk.chunk.v1+zstd"
KERNEL_TYPE = "application/vnd.meda.kernel.v1"
INITRD_TYPE = "application/vnd.meda.initrd.v1"
TITLE = "org.opencontainers.image.title"
CHUNK_INDEX = "vnd.meda.chunk.index"
CHUNK_SIZE = "vnd.meda.chunk.size"
CHUNK_DIGEST = "vnd.meda.chunk.digest"

RUST_ARTIFACT_TYPE = "application/vnd.cirunlabs.meda.vm.v1"
_RUST_LAYER = re.compile(r"application/vnd\.cirunlabs\.meda\.([a-z-]+?)(-chunk)?\.v1")
_RUST_CHUNK_TITLE = re.compile(r"(?P<file>.+)\.chunk\.(?P<index>\d{3})")
_NUMBER = re.compile(r"[0-9]{1,15}")
_DISK_FORMAT = re.compile(r"[a-z0-9]{1,16}")
MAX_MANIFEST = 4 * MiB
MAX_CONFIG = MiB
MIN_CHUNK_SIZE = MiB


#: The digest and size checks, with errors that say where the content came from.
CHECKS = content.Checks("the registry sent")
invalid, checked_digest, checked_size = CHECKS.invalid, CHECKS.digest, CHECKS.size


def ready_port_of(config: dict[str, Any]) -> int | None:
    """The config's ``ready_port``: absent or null, or an integer port 1 to 65535."""
    value = config.get("ready_port")
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= 65535:
        raise invalid("ready port (an integer 1 to 65535)", value)
    return value


def _number(value: Any, what: str) -> int:
    """An annotation's decimal number."""
    if not isinstance(value, str) or not _NUMBER.fullmatch(value):
        raise invalid(what, value)
    return int(value)


def parse_manifest(raw: bytes, max_blob: int) -> dict[str, Any]:
    """The manifest with its config's and layers' descriptors checked."""
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise invalid("manifest (not JSON)", raw[:40]) from None
    if not isinstance(manifest, dict):
        raise invalid("manifest", manifest)
    _check_descriptor(manifest.get("config"), MAX_CONFIG, "config")
    layers = manifest.setdefault("layers", [])
    if not isinstance(layers, list):
        raise invalid("layer list", layers)
    for layer in layers:
        _check_descriptor(layer, max_blob, "layer")
    return manifest


def _check_descriptor(value: Any, max_size: int, what: str) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("mediaType", ""), str):
        raise invalid(f"{what} descriptor", value)
    checked_digest(value.get("digest"), f"{what} digest")
    checked_size(value.get("size"), max_size, f"{what} size")
    notes = value.setdefault("annotations", {})
    if not isinstance(notes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in notes.items()
    ):
        raise invalid(f"{what} annotations", notes)


@dataclass(frozen=True)
class Disk:
    """A meda image's disk, as its config describes it."""

    format: str
    size: int
    chunk_size: int


def disk_of(config: Any, max_disk: int) -> Disk | None:
    """The checked disk section of a meda config (None: the image has no disk)."""
    if not isinstance(config, dict):
        raise invalid("config", config)
    meta = config.get("disk")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise invalid("disk description", meta)
    disk_format = meta.get("format")
    if not isinstance(disk_format, str) or not _DISK_FORMAT.fullmatch(disk_format):
        raise invalid("disk format", disk_format)
    chunk_size = checked_size(meta.get("chunk_size"), MAX_CHUNK_SIZE, "chunk size")
    if chunk_size < MIN_CHUNK_SIZE:
        raise invalid(f"chunk size (at least {MIN_CHUNK_SIZE})", chunk_size)
    return Disk(disk_format, checked_size(meta.get("size"), max_disk, "disk size"), chunk_size)


@dataclass(frozen=True)
class Chunk:
    index: int
    offset: int
    size: int  # uncompressed
    digest: str  # of the uncompressed bytes
    blob: str  # digest of the compressed layer
    blob_size: int


def descriptor(media_type: str, digest: str, size: int, **annotations: str) -> dict[str, Any]:
    found: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        found["annotations"] = annotations
    return found


def chunk_layer(chunk: Chunk) -> dict[str, Any]:
    return descriptor(
        CHUNK_TYPE,
        chunk.blob,
        chunk.blob_size,
        **{
            TITLE: f"disk.chunk.{chunk.index:05d}",
            CHUNK_INDEX: str(chunk.index),
            CHUNK_SIZE: str(chunk.size),
            CHUNK_DIGEST: chunk.digest,
        },
    )


def chunks_of(manifest: dict[str, Any], disk: Disk) -> list[Chunk]:
    """The disk's chunk layers, each inside the disk, none twice, by index."""
    found: dict[int, Chunk] = {}
    for layer in manifest.get("layers", []):
        if layer.get("mediaType") == CHUNK_TYPE:
            notes = layer["annotations"]
            index = _number(notes.get(CHUNK_INDEX), "chunk index")
            size = _number(notes.get(CHUNK_SIZE), "chunk size")
            offset = index * disk.chunk_size
            if index in found or not 0 < size <= disk.chunk_size or offset + size > disk.size:
                raise invalid(
                    f"disk chunk {index} (size {size}) for a {disk.size}-byte disk", notes
                )
            digest = checked_digest(notes.get(CHUNK_DIGEST), "chunk digest")
            found[index] = Chunk(index, offset, size, digest, layer["digest"], layer["size"])
    return [found[i] for i in sorted(found)]


def layer_of(manifest: dict[str, Any], media_type: str) -> dict[str, Any] | None:
    return next((la for la in manifest["layers"] if la.get("mediaType") == media_type), None)


@dataclass(frozen=True)
class RustFile:
    """One file of a Rust-meda artifact: its type and its layers, in concatenation order."""

    kind: str  # base-image, firmware, user-data, meta-data, network-config, ...
    title: str
    layers: list[dict[str, Any]]


def is_rust_format(manifest: dict[str, Any]) -> bool:
    if manifest.get("artifactType") == RUST_ARTIFACT_TYPE:
        return True
    return any(_RUST_LAYER.fullmatch(la.get("mediaType", "")) for la in manifest.get("layers", []))


def rust_files(manifest: dict[str, Any]) -> list[RustFile]:
    """Group the layers by file; chunk layers ``<file>.chunk.NNN`` are ordered by NNN."""
    files: dict[str, tuple[str, list[tuple[int, dict[str, Any]]]]] = {}
    for layer in manifest.get("layers", []):
        match = _RUST_LAYER.fullmatch(layer.get("mediaType", ""))
        if match is None:
            continue
        title = layer.get("annotations", {}).get(TITLE, "")
        index = 0
        if match.group(2):
            chunk = _RUST_CHUNK_TITLE.fullmatch(title)
            if chunk is None:
                raise BackendError(f"chunk layer with a malformed title '{title}'")
            title, index = chunk.group("file"), int(chunk.group("index"))
        files.setdefault(title, (match.group(1), []))[1].append((index, layer))
    found = []
    for title, (kind, parts) in files.items():
        indexes = sorted(index for index, _ in parts)
        if indexes != list(range(len(parts))):
            raise invalid(f"set of chunk numbers for '{title[:80]}'", indexes[:20])
        found.append(RustFile(kind, title, [la for _, la in sorted(parts, key=lambda p: p[0])]))
    return found
