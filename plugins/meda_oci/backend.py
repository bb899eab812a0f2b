"""The ``oci`` registry backend: meda images as OCI artifacts, on oras-py."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import zstandard

from meda_core.backends import Availability, ImageFiles, Progress, RegistryBackend
from meda_core.blobs import sha256_file
from meda_core.errors import BackendError
from meda_core.models import VMSpec
from meda_core.references import Reference
from meda_oci import formats
from meda_oci.client import OCI_MANIFEST, RegistryClient, sha256_digest
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
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"resume", "verify", "zstd-chunks", "read-rust-meda"}
    )

    @property
    def config(self) -> OciSettings:
        return OciSettings()

    def check_available(self) -> Availability:
        return Availability.yes()

    def _clients(self, ref: Reference) -> Callable[[], RegistryClient]:
        """One client per thread: a requests session is not shared between threads."""
        local = threading.local()

        def client() -> RegistryClient:
            if not hasattr(local, "client"):
                local.client = RegistryClient(ref)
            return local.client  # type: ignore[no-any-return]

        return client

    def manifest_digest(self, reference: Reference) -> str | None:
        return RegistryClient(reference).manifest_digest(reference.digest or reference.tag)

    # ---- push ----

    def push(self, files: ImageFiles, reference: Reference, progress: Progress) -> str:
        client = self._clients(reference)
        config = self.config
        parts = [p for p in (files.disk, files.kernel, files.initrd) if p is not None]
        meter = _Meter(sum(p.stat().st_size for p in parts), progress)
        layers: list[dict[str, Any]] = []
        disk_meta: dict[str, Any] | None = None
        if files.disk is not None:
            chunks, zero = self._push_disk(files.disk, client, config, meter)
            layers += [formats.chunk_layer(c) for c in chunks]
            disk_meta = {
                "format": files.disk_format, "size": files.disk.stat().st_size,
                "chunk_size": config.chunk_size, "zero_chunks": zero,
            }  # fmt: skip
        for path, media_type, title in (
            (files.kernel, formats.KERNEL_TYPE, "vmlinuz"),
            (files.initrd, formats.INITRD_TYPE, "initrd"),
        ):
            if path is not None:
                layers.append(self._push_file(path, media_type, title, client(), meter))
        config_blob = json.dumps(
            {"disk": disk_meta, "cmdline": files.cmdline,
             "defaults": files.defaults.model_dump() if files.defaults else None},
            sort_keys=True,
        ).encode()  # fmt: skip
        config_digest = sha256_digest(config_blob)
        client().upload(config_blob, config_digest, len(config_blob))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": formats.ARTIFACT_TYPE,
            "config": formats.descriptor(formats.CONFIG_TYPE, config_digest, len(config_blob)),
            "layers": layers,
            "annotations": {"org.opencontainers.image.created": datetime.now(UTC).isoformat()},
        }
        return client().put_manifest(manifest, reference.tag)

    def _push_disk(
        self, disk: Path, client: Callable[[], RegistryClient], config: OciSettings, meter: _Meter
    ) -> tuple[list[formats.Chunk], list[int]]:
        size, step = disk.stat().st_size, config.chunk_size
        count = (size + step - 1) // step

        def one(index: int) -> formats.Chunk | None:
            with disk.open("rb") as f:
                data = os.pread(f.fileno(), step, index * step)
            meter.advance(len(data))
            if not data.strip(b"\0"):
                return None  # an all-zero chunk travels as a number in the config
            packed = zstandard.ZstdCompressor(level=config.zstd_level).compress(data)
            blob = sha256_digest(packed)
            client().upload(packed, blob, len(packed))
            return formats.Chunk(index, index * step, len(data), sha256_digest(data), blob,
                                 len(packed))  # fmt: skip

        with ThreadPoolExecutor(config.concurrency) as pool:
            results = list(pool.map(one, range(count)))
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
        client = self._clients(reference)
        raw, digest = client().manifest(reference.digest or reference.tag)
        if reference.digest and digest != reference.digest:
            raise BackendError(f"manifest {digest} is not the requested {reference.digest}")
        manifest = json.loads(raw)
        if formats.is_rust_format(manifest):
            files = self._pull_rust(manifest, workdir, client, progress)
        elif manifest.get("artifactType") == formats.ARTIFACT_TYPE:
            files = self._pull_meda(manifest, workdir, client, progress)
        else:
            raise BackendError(
                f"{reference} is not a meda image (artifactType {manifest.get('artifactType')!r})"
            )
        return ImageFiles(**{**files.__dict__, "digest": digest})

    def _pull_meda(
        self, manifest: dict[str, Any], workdir: Path, client: Callable[[], RegistryClient],
        progress: Progress,
    ) -> ImageFiles:  # fmt: skip
        config_layer = manifest["config"]
        config_path = client().download(
            config_layer["digest"], workdir / CONFIG_FILE, lambda n: None
        )
        config = json.loads(config_path.read_text())
        disk_meta = config.get("disk")
        chunks = formats.chunks_of(manifest, disk_meta["chunk_size"]) if disk_meta else []
        kinds = ((formats.KERNEL_TYPE, "vmlinuz"), (formats.INITRD_TYPE, "initrd"))
        extras = [
            (layer, name)
            for media_type, name in kinds
            if (layer := formats.layer_of(manifest, media_type)) is not None
        ]
        total = sum(c.blob_size for c in chunks) + sum(int(la["size"]) for la, _ in extras)
        meter = _Meter(total, progress)
        disk = self._pull_disk(disk_meta, chunks, workdir, client, meter) if disk_meta else None
        paths = {name: _fetch(client, layer, workdir / name, meter) for layer, name in extras}
        defaults = config.get("defaults")
        return ImageFiles(
            disk=disk, disk_format=disk_meta["format"] if disk_meta else None,
            kernel=paths.get("vmlinuz"), initrd=paths.get("initrd"),
            cmdline=config.get("cmdline"),
            defaults=VMSpec.model_validate(defaults) if defaults else None,
        )  # fmt: skip

    def _pull_disk(
        self, meta: dict[str, Any], chunks: list[formats.Chunk], workdir: Path,
        client: Callable[[], RegistryClient], meter: _Meter,
    ) -> Path:  # fmt: skip
        """Chunks land in a sparse file at their offsets; a marker per chunk makes it
        resumable; zero chunks stay holes."""
        final = workdir / "disk"
        partial, done_dir = workdir / "disk.partial", workdir / "chunks-done"
        done_dir.mkdir(parents=True, exist_ok=True)
        with partial.open("ab") as f:
            f.truncate(int(meta["size"]))

        def one(chunk: formats.Chunk) -> None:
            marker = done_dir / str(chunk.index)
            if marker.exists():
                meter.advance(chunk.blob_size)
                return
            blob = client().download(chunk.blob, workdir / f"chunk-{chunk.index}", meter.advance)
            # A decompressor per chunk: they are not safe to share between threads.
            unpack = zstandard.ZstdDecompressor()
            data = unpack.decompress(blob.read_bytes(), max_output_size=chunk.size)
            if sha256_digest(data) != chunk.digest or len(data) != chunk.size:
                blob.unlink()
                raise BackendError(f"disk chunk {chunk.index} failed verification after unpacking")
            with partial.open("r+b") as f:
                os.pwrite(f.fileno(), data, chunk.offset)
                os.fsync(f.fileno())
            marker.touch()
            blob.unlink()

        with ThreadPoolExecutor(self.config.concurrency) as pool:
            list(pool.map(one, chunks))
        partial.replace(final)
        shutil.rmtree(done_dir, ignore_errors=True)
        return final

    def _pull_rust(
        self, manifest: dict[str, Any], workdir: Path, client: Callable[[], RegistryClient],
        progress: Progress,
    ) -> ImageFiles:  # fmt: skip
        """Rust-meda artifacts: one layer per file, big files in chunk layers to concatenate."""
        files = formats.rust_files(manifest)
        meter = _Meter(sum(int(la["size"]) for f in files for la in f.layers), progress)
        layers = [la for f in files for la in f.layers]
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            fetched = list(pool.map(
                lambda la: _fetch(client, la, workdir / "layers" / la["digest"][7:], meter),
                layers,
            ))  # fmt: skip
        by_digest = dict(zip((la["digest"] for la in layers), fetched, strict=True))
        assembled: dict[str, Path] = {}
        for f in files:
            dest = workdir / f.kind
            with dest.open("wb") as out:
                for layer in f.layers:
                    with by_digest[layer["digest"]].open("rb") as part:
                        shutil.copyfileobj(part, out, 4 * 1024 * 1024)
            assembled[f.kind] = dest
        shutil.rmtree(workdir / "layers", ignore_errors=True)
        if "base-image" not in assembled:
            raise BackendError("the artifact has no base-image layer")
        return ImageFiles(disk=assembled["base-image"], disk_format="raw")


def _fetch(
    client: Callable[[], RegistryClient], layer: dict[str, Any], dest: Path, meter: _Meter
) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # verified on an earlier, interrupted pull
        meter.advance(int(layer["size"]))
        return dest
    return client().download(layer["digest"], dest, meter.advance)
