"""The image formats in registries: meda's own, and the one the Rust meda pushes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from meda_core.errors import BackendError

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
        CHUNK_TYPE, chunk.blob, chunk.blob_size,
        **{TITLE: f"disk.chunk.{chunk.index:05d}", CHUNK_INDEX: str(chunk.index),
           CHUNK_SIZE: str(chunk.size), CHUNK_DIGEST: chunk.digest},
    )  # fmt: skip


def chunks_of(manifest: dict[str, Any], chunk_size: int) -> list[Chunk]:
    found = []
    for layer in manifest.get("layers", []):
        if layer.get("mediaType") == CHUNK_TYPE:
            notes = layer.get("annotations", {})
            index = int(notes[CHUNK_INDEX])
            found.append(
                Chunk(index, index * chunk_size, int(notes[CHUNK_SIZE]), notes[CHUNK_DIGEST],
                      layer["digest"], int(layer["size"]))
            )  # fmt: skip
    return sorted(found, key=lambda c: c.index)


def layer_of(manifest: dict[str, Any], media_type: str) -> dict[str, Any] | None:
    return next((la for la in manifest.get("layers", []) if la["mediaType"] == media_type), None)


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
    return [
        RustFile(kind, title, [layer for _, layer in sorted(parts, key=lambda p: p[0])])
        for title, (kind, parts) in files.items()
    ]
