"""The ``oci`` registry backend: meda images as OCI artifacts, on oras-py."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import zstandard

from meda_core.plugin import (
    Availability,
    BackendError,
    Capability,
    ImageFiles,
    Progress,
    Reference,
    RegistryBackend,
    VMSpec,
    sha256_file,
)
from meda_oci import directio, formats, parallel, unpack
from meda_oci.client import OCI_MANIFEST, RegistryClient, sha256_digest
from meda_oci.deadline import Deadline
from meda_oci.diskdigest import DiskDigest
from meda_oci.settings import OciSettings

CONFIG_FILE = "config.json"


class _Meter:
    """Thread-safe byte counter feeding a progress callback."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.done, self._progress = total, 0, progress
        self._lock = threading.Lock()

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
            done = self.done
        self._progress(done, self.total)


class OciRegistry(RegistryBackend):
    name = "oci"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.RESUME, Capability.VERIFY, Capability.ZSTD_CHUNKS, Capability.READ_RUST_MEDA}
    )

    @property
    def config(self) -> OciSettings:
        return OciSettings()

    def check_available(self) -> Availability:
        return Availability.yes()

    def _client(self, ref: Reference, deadline: Deadline) -> RegistryClient:
        """One client per operation, shared by its threads: one login, one connection pool."""
        return RegistryClient(ref, deadline, connections=self.config.concurrency)

    def manifest_digest(self, reference: Reference) -> str | None:
        with Deadline(self.config.deadline) as deadline:
            client = RegistryClient(reference, deadline)
            return client.manifest_digest(reference.digest or reference.tag)

    # ---- push ----

    def push(self, files: ImageFiles, reference: Reference, progress: Progress) -> str:
        config = self.config
        with Deadline(config.deadline) as deadline:
            return self._push(files, reference, self._client(reference, deadline), config, progress)

    def _push(
        self,
        files: ImageFiles,
        reference: Reference,
        client: RegistryClient,
        config: OciSettings,
        progress: Progress,
    ) -> str:
        parts = [p for p in (files.disk, files.kernel, files.initrd) if p is not None]
        meter = _Meter(sum(p.stat().st_size for p in parts), progress)
        layers, disk_meta = self._push_layers(files, client, config, meter)
        config_blob = _config_blob(files, disk_meta)
        config_digest = sha256_digest(config_blob)
        client.upload(config_blob, config_digest, len(config_blob))
        described = formats.descriptor(formats.CONFIG_TYPE, config_digest, len(config_blob))
        return client.put_manifest(_manifest(described, layers), reference.tag)

    def _push_layers(
        self,
        files: ImageFiles,
        client: RegistryClient,
        config: OciSettings,
        meter: _Meter,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Upload the disk's chunks, the kernel and the initrd; their layers, and the
        disk's description for the config (None: no disk)."""
        layers: list[dict[str, Any]] = []
        disk_meta: dict[str, Any] | None = None
        if files.disk is not None:
            chunks, zero = self._push_disk(files.disk, client, config, meter)
            layers += [formats.chunk_layer(c) for c in chunks]
            disk_meta = {
                "format": files.disk_format,
                "size": files.disk.stat().st_size,
                "chunk_size": config.chunk_size,
                "zero_chunks": zero,
            }
        for path, media_type, title in (
            (files.kernel, formats.KERNEL_TYPE, "vmlinuz"),
            (files.initrd, formats.INITRD_TYPE, "initrd"),
        ):
            if path is not None:
                layers.append(self._push_file(path, media_type, title, client, meter))
        return layers, disk_meta

    def _push_disk(
        self, disk: Path, client: RegistryClient, config: OciSettings, meter: _Meter
    ) -> tuple[list[formats.Chunk], list[int]]:
        size, step = disk.stat().st_size, config.chunk_size
        count = (size + step - 1) // step

        def one(index: int) -> formats.Chunk | None:
            with disk.open("rb") as f:
                data = os.pread(f.fileno(), step, index * step)
            meter.advance(len(data))
            if data == bytes(len(data)):  # a compare, not a copy of what strip() keeps
                return None  # an all-zero chunk travels as a number in the config
            packed = zstandard.ZstdCompressor(level=config.zstd_level).compress(data)
            blob = sha256_digest(packed)
            client.upload(packed, blob, len(packed))
            return formats.Chunk(
                index, index * step, len(data), sha256_digest(data), blob, len(packed)
            )

        results = parallel.each(config.concurrency, one, range(count))
        chunks = [c for c in results if c is not None]
        return chunks, [i for i, c in enumerate(results) if c is None]

    def _push_file(
        self, path: Path, media_type: str, title: str, client: RegistryClient, meter: _Meter
    ) -> dict[str, Any]:
        digest, size = sha256_file(path), path.stat().st_size
        with path.open("rb") as f:
            client.upload(f, digest, size)
        meter.advance(size)
        return formats.descriptor(media_type, digest, size, **{formats.TITLE: title})

    # ---- pull ----

    def pull(self, reference: Reference, workdir: Path, progress: Progress) -> ImageFiles:
        config = self.config
        with Deadline(config.deadline) as deadline:
            client = self._client(reference, deadline)
            raw, digest = client.manifest(reference.digest or reference.tag)
            if reference.digest and digest != formats.checked_digest(reference.digest):
                raise BackendError(f"manifest {digest} is not the requested {reference.digest}")
            manifest = formats.parse_manifest(raw, config.max_blob_size)
            workdir = _own_folder(workdir, digest)
            if formats.is_rust_format(manifest):
                files = self._pull_rust(manifest, workdir, client, progress)
            elif manifest.get("artifactType") == formats.ARTIFACT_TYPE:
                files = self._pull_meda(manifest, workdir, client, config, progress)
            else:
                raise BackendError(
                    f"{reference} is not a meda image "
                    f"(artifactType {str(manifest.get('artifactType'))[:80]!r})"
                )
        return ImageFiles(**{**files.__dict__, "digest": digest})

    def _pull_meda(
        self,
        manifest: dict[str, Any],
        workdir: Path,
        client: RegistryClient,
        settings: OciSettings,
        progress: Progress,
    ) -> ImageFiles:
        layer = manifest["config"]
        path = client.download(layer["digest"], layer["size"], workdir / CONFIG_FILE, _ignore)
        try:
            config = json.loads(path.read_bytes())
        except ValueError:
            raise formats.invalid("config (not JSON)", path.read_bytes()[:40]) from None
        disk = formats.disk_of(config, settings.max_disk_size)
        ready_port = formats.ready_port_of(config)  # checked before any layer moves
        chunks = formats.chunks_of(manifest, disk) if disk else []
        kinds = ((formats.KERNEL_TYPE, "vmlinuz"), (formats.INITRD_TYPE, "initrd"))
        extras = [
            (layer, name)
            for media_type, name in kinds
            if (layer := formats.layer_of(manifest, media_type)) is not None
        ]
        total = sum(c.blob_size for c in chunks) + sum(la["size"] for la, _ in extras)
        meter = _Meter(total, progress)
        disk_path, disk_digest = (
            self._pull_disk(disk, chunks, workdir, client, meter) if disk else (None, None)
        )
        paths = {name: _fetch(client, layer, workdir / name, meter) for layer, name in extras}
        defaults = config.get("defaults")
        cmdline = config.get("cmdline")
        if cmdline is not None and not isinstance(cmdline, str):
            raise formats.invalid("kernel command line", cmdline)
        return ImageFiles(
            disk=disk_path,
            disk_digest=disk_digest,
            disk_format=disk.format if disk else None,
            kernel=paths.get("vmlinuz"),
            initrd=paths.get("initrd"),
            cmdline=cmdline,
            defaults=VMSpec.model_validate(defaults) if defaults else None,
            ready_port=ready_port,
        )

    def _pull_disk(
        self,
        disk: formats.Disk,
        chunks: list[formats.Chunk],
        workdir: Path,
        client: RegistryClient,
        meter: _Meter,
    ) -> tuple[Path, str]:
        """Chunks stream from the registry, unpacking as they arrive, into a sparse file at
        their offsets, the whole disk hashed right behind them; a marker per chunk makes it
        resumable; zero stretches stay holes. The file and its digest."""
        final = workdir / "disk"
        partial, done_dir = workdir / "disk.partial", workdir / "chunks-done"
        done_dir.mkdir(parents=True, exist_ok=True)
        fresh = not partial.exists()  # all holes: zeros need not be written
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
        direct = directio.open_direct(partial)
        try:
            os.ftruncate(fd, disk.size)
            hold = self.config.hold_memory // unpack.WRITE  # pieces hashed from memory
            whole = DiskDigest(fd, disk.size, disk.chunk_size, direct, hold)
            try:
                self._unpack_chunks(chunks, (fd, direct), fresh, done_dir, client, meter, whole)
                os.fsync(fd)  # while the digest catches up
                digest = whole.result()
            finally:
                whole.cancel()
        finally:
            if direct is not None:
                os.close(direct)
            os.close(fd)
        partial.replace(final)
        shutil.rmtree(done_dir, ignore_errors=True)
        return final, digest

    def _unpack_chunks(
        self,
        chunks: list[formats.Chunk],
        fds: tuple[int, int | None],
        fresh: bool,
        done_dir: Path,
        client: RegistryClient,
        meter: _Meter,
        whole: DiskDigest,
    ) -> None:
        """``fds``: the disk file's descriptor, and its ``O_DIRECT`` one (None: none)."""
        fd, direct = fds
        listed = {c.index for c in chunks}
        for index in range(whole.count):
            if index not in listed:
                whole.ready(index)  # a zero chunk: a hole from the start

        def one(chunk: formats.Chunk) -> None:
            marker = done_dir / str(chunk.index)
            if _resumable(marker, chunk, fd):
                meter.advance(chunk.blob_size)
            else:
                with unpack.ChunkWriter(
                    fd,
                    chunk.offset,
                    chunk.size,
                    fresh,
                    functools.partial(whole.written, chunk.index),
                    direct,
                    functools.partial(whole.offer, chunk.index),
                ) as writer:
                    client.stream(chunk.blob, chunk.blob_size, writer.feed, meter.advance)
                    writer.finish()
                marker.write_text(chunk.digest)
            whole.ready(chunk.index)

        parallel.each(self.config.concurrency, one, chunks)

    def _pull_rust(
        self,
        manifest: dict[str, Any],
        workdir: Path,
        client: RegistryClient,
        progress: Progress,
    ) -> ImageFiles:
        """Rust-meda artifacts: one layer per file, big files in chunk layers to concatenate.

        Only the base image is used (and fetched); its parts land under names meda picks.
        """
        bases = [f for f in formats.rust_files(manifest) if f.kind == "base-image"]
        if len(bases) != 1:
            raise BackendError(f"the artifact has {len(bases)} base-image files, not one")
        layers = bases[0].layers
        total = sum(la["size"] for la in layers)
        if total > self.config.max_disk_size:
            raise formats.invalid(f"base image size (at most {self.config.max_disk_size})", total)
        meter = _Meter(total, progress)
        parts = workdir / "layers"
        fetched = parallel.each(
            self.config.concurrency,
            lambda pair: _fetch(client, pair[1], parts / str(pair[0]), meter),
            enumerate(layers),
        )
        dest = workdir / "disk"
        with dest.open("wb") as out:
            for path in fetched:
                with path.open("rb") as part:
                    shutil.copyfileobj(part, out, 4 * 1024 * 1024)
        shutil.rmtree(parts, ignore_errors=True)
        return ImageFiles(disk=dest, disk_format="raw")


def _config_blob(files: ImageFiles, disk_meta: dict[str, Any] | None) -> bytes:
    """The image config: the disk's description, command line, defaults, ready port."""
    meta: dict[str, Any] = {
        "disk": disk_meta,
        "cmdline": files.cmdline,
        "defaults": files.defaults.model_dump() if files.defaults else None,
    }
    if files.ready_port is not None:  # absent, not null: older pushes keep their bytes
        meta["ready_port"] = files.ready_port
    return json.dumps(meta, sort_keys=True).encode()


def _manifest(config: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": formats.ARTIFACT_TYPE,
        "config": config,
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": datetime.now(UTC).isoformat()},
    }


def _ignore(count: int) -> None:
    pass


def _own_folder(workdir: Path, digest: str) -> Path:
    """The backend's folder in ``workdir``: what an earlier pull left there is kept only if
    it was pulling this same manifest (a moved tag starts over)."""
    folder = workdir / "oci"
    stamp = folder / "manifest-digest"
    if not (stamp.exists() and stamp.read_text() == digest):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        stamp.write_text(digest)
    return folder


def _resumable(marker: Path, chunk: formats.Chunk, fd: int) -> bool:
    """An earlier pull wrote ``chunk``, and its bytes on disk still hash right (a marker
    is a hint, not proof: the data may not have reached the disk before a crash)."""
    if not (marker.exists() and marker.read_text() == chunk.digest):
        return False
    hasher, done = hashlib.sha256(), 0
    while done < chunk.size:
        piece = os.pread(fd, min(unpack.WRITE, chunk.size - done), chunk.offset + done)
        if not piece:
            return False
        hasher.update(piece)
        done += len(piece)
    return f"sha256:{hasher.hexdigest()}" == chunk.digest


def _fetch(client: RegistryClient, layer: dict[str, Any], dest: Path, meter: _Meter) -> Path:
    """``layer`` into ``dest`` (a path of meda's choosing), verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return client.download(layer["digest"], layer["size"], dest, meter.advance)
