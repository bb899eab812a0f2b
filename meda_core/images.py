"""The local image store: import files as an image, list, resolve a reference."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from meda_core.errors import ImageExists, ImageNotFound, InvalidRequest
from meda_core.files import copy_sparse
from meda_core.models import Image
from meda_core.names import parse_image_ref
from meda_core.store import StateStore

DiskFormatProbe = Callable[[Path], str]

NO_IMAGE_HINT = (
    "import one with `meda images import NAME --kernel FILE --initrd FILE` "
    "(or `--disk FILE`) and set MEDA_DEFAULT_IMAGE=NAME, or name an image in the request"
)


class ImageService:
    """Images under ``MEDA_HOME/images/<name>/<tag>/``, recorded in the state store."""

    def __init__(
        self, store: StateStore, root: Path, default_ref: str, probe_format: DiskFormatProbe
    ) -> None:
        self._store = store
        self._root = root
        self._default_ref = default_ref
        self._probe_format = probe_format

    def list(self) -> list[Image]:
        return self._store.list_images()

    def get(self, ref: str) -> Image:
        name, tag = parse_image_ref(ref)
        image = self._store.get_image(name, tag)
        if image is None:
            raise ImageNotFound(f"image '{name}:{tag}' not found; {NO_IMAGE_HINT}", image=ref)
        return image

    def resolve(self, ref: str | None) -> Image:
        """The image a new VM uses: ``ref``, else the configured default image."""
        return self.get(ref or self._default_ref)

    def import_files(
        self,
        ref: str,
        disk: Path | None = None,
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str | None = None,
    ) -> Image:
        """Copy local files into the store as image ``ref``, atomically."""
        name, tag = parse_image_ref(ref)
        if disk is None and kernel is None:
            raise InvalidRequest("an image needs a disk, a kernel, or both")
        if initrd is not None and kernel is None:
            raise InvalidRequest("an initrd needs a kernel")
        for path in (disk, kernel, initrd):
            if path is not None and not path.is_file():
                raise InvalidRequest(f"no such file: {path}", path=str(path))
        if self._store.get_image(name, tag) is not None:
            raise ImageExists(f"image '{name}:{tag}' already exists", image=f"{name}:{tag}")
        final = self._root / name / tag
        staging = self._root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            image = self._stage(staging, final, name, tag, disk, kernel, initrd, cmdline)
            final.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not self._store.insert_image(image):
            shutil.rmtree(final, ignore_errors=True)
            raise ImageExists(f"image '{name}:{tag}' already exists", image=f"{name}:{tag}")
        return image

    def _stage(
        self,
        staging: Path,
        final: Path,
        name: str,
        tag: str,
        disk: Path | None,
        kernel: Path | None,
        initrd: Path | None,
        cmdline: str | None,
    ) -> Image:
        fields: dict[str, Path] = {}
        for field, source, filename in (
            ("disk", disk, "disk"),
            ("kernel", kernel, "vmlinuz"),
            ("initrd", initrd, "initrd"),
        ):
            if source is not None:
                copy_sparse(source, staging / filename)
                fields[field] = final / filename
        disk_format = self._probe_format(staging / "disk") if disk is not None else None
        size = sum(f.stat().st_size for f in staging.iterdir())
        return Image(
            name=name,
            tag=tag,
            disk_format=disk_format,
            cmdline=cmdline,
            size=size,
            created=datetime.now(UTC),
            **fields,
        )
