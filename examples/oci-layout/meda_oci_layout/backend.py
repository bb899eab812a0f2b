"""The ``oci-layout`` registry backend: an image is a manifest with one layer per file
(disk, kernel, initrd) and a config carrying the rest, in the layout of its repository."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from meda_core.plugin import (
    Availability,
    BackendError,
    Capability,
    ImageFiles,
    MedaError,
    NotFound,
    Progress,
    Reference,
    RegistryBackend,
    VMSpec,
)
from meda_oci_layout.layout import (
    MANIFEST_TYPE,
    MAX_JSON,
    Layout,
    Meter,
    checked_descriptor,
    checked_digest,
    descriptor,
    invalid,
    parse_json,
)
from meda_oci_layout.settings import LayoutSettings

ARTIFACT_TYPE = "application/vnd.meda.oci-layout.vm.v1"
CONFIG_TYPE = "application/vnd.meda.oci-layout.config.v1+json"
#: The layer media type of each file, and the name it is pulled to.
KINDS = {
    "application/vnd.meda.oci-layout.disk.v1": "disk",
    "application/vnd.meda.oci-layout.kernel.v1": "vmlinuz",
    "application/vnd.meda.oci-layout.initrd.v1": "initrd",
}
TITLE = "org.opencontainers.image.title"
MAX_CMDLINE = 4096
_DISK_FORMAT = re.compile(r"[a-z0-9]{1,16}")


class LayoutRegistry(RegistryBackend):
    name = "oci-layout"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.VERIFY})

    @property
    def config(self) -> LayoutSettings:
        return LayoutSettings()

    @property
    def root(self) -> Path:
        return self.config.root or self.context.settings.home / "oci-layout"

    def check_available(self) -> Availability:
        root = self.root
        if root.exists() and not root.is_dir():
            return Availability.no(f"the OCI layout root {root} is not a folder")
        return Availability.yes()

    def _layout(self, reference: Reference) -> Layout:
        """The layout of the reference's repository (its registry host is not used)."""
        return Layout(self.root, reference.repository)

    def manifest_digest(self, reference: Reference) -> str | None:
        layout = self._layout(reference)
        if reference.digest is not None:
            digest = checked_digest(reference.digest)
            return digest if layout.blob_path(digest).is_file() else None
        found = layout.find(reference.tag)
        return None if found is None else str(found["digest"])

    # ---- push ----

    def push(self, files: ImageFiles, reference: Reference, progress: Progress) -> str:
        layout = self._layout(reference)
        layout.create()
        given = (files.disk, files.kernel, files.initrd)
        parts = [(kind, path) for kind, path in zip(KINDS, given, strict=True) if path]
        total, done = sum(p.stat().st_size for _, p in parts), 0

        def meter(count: int) -> None:
            nonlocal done
            done += count
            progress(done, total)

        layers = [_layer(layout, media_type, path, meter) for media_type, path in parts]
        config = layout.add_bytes(json.dumps(_config_of(files), sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": descriptor(CONFIG_TYPE, *config),
            "layers": layers,
        }
        digest, size = layout.add_bytes(json.dumps(manifest, indent=2).encode())
        layout.tag(descriptor(MANIFEST_TYPE, digest, size), reference.tag)
        return digest

    # ---- pull ----

    @staticmethod
    def _manifest(layout: Layout, reference: Reference) -> tuple[str, bytes]:
        """The digest and the verified bytes of the manifest ``reference`` names."""
        if reference.digest is not None:
            digest = checked_digest(reference.digest)
            if not layout.blob_path(digest).is_file():
                raise NotFound(f"no manifest {digest} in the OCI layout {layout.path}")
            return digest, layout.read_blob(digest)
        found = layout.find(reference.tag)
        if found is None:
            raise NotFound(f"no image {reference} in the OCI layout {layout.path}")
        return found["digest"], layout.read_blob(found["digest"], found["size"])

    def pull(self, reference: Reference, workdir: Path, progress: Progress) -> ImageFiles:
        layout = self._layout(reference)
        digest, raw = self._manifest(layout, reference)
        manifest = _checked_manifest(raw, self.config.max_blob_size)
        config = _checked_config(layout, manifest["config"])
        folder = workdir / "oci-layout"
        shutil.rmtree(folder, ignore_errors=True)  # a local copy: nothing worth resuming
        folder.mkdir(parents=True)
        paths = _copy_layers(layout, manifest["layers"], folder, progress)
        if "disk" in paths and config.get("disk_format") is None:
            raise invalid("config (a disk without a format)", config)
        return ImageFiles(
            disk=paths.get("disk"),
            disk_format=config.get("disk_format") if "disk" in paths else None,
            kernel=paths.get("vmlinuz"),
            initrd=paths.get("initrd"),
            cmdline=config.get("cmdline"),
            defaults=config.get("defaults"),
            digest=digest,
            ready_port=config.get("ready_port"),
        )


def _layer(layout: Layout, media_type: str, path: Path, meter: Meter) -> dict[str, Any]:
    digest, size = layout.add_file(path, meter)
    return descriptor(media_type, digest, size, **{TITLE: KINDS[media_type]})


def _config_of(files: ImageFiles) -> dict[str, Any]:
    return {
        "disk_format": files.disk_format if files.disk else None,
        "cmdline": files.cmdline,
        "defaults": files.defaults.model_dump(mode="json") if files.defaults else None,
        "ready_port": files.ready_port,
    }


def _checked_manifest(raw: bytes, max_blob: int) -> dict[str, Any]:
    """A meda manifest whose config and layers (one per kind at most) are sound."""
    manifest = parse_json(raw, "manifest")
    if not isinstance(manifest, dict) or manifest.get("artifactType") != ARTIFACT_TYPE:
        raise BackendError("the manifest is not a meda image of the oci-layout backend")
    checked_descriptor(manifest.get("config"), MAX_JSON, "config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise invalid("layer list", layers)
    for layer in layers:
        checked_descriptor(layer, max_blob, "layer")
    kinds = [layer["mediaType"] for layer in layers]
    if any(kind not in KINDS for kind in kinds) or len(set(kinds)) != len(kinds):
        raise invalid("set of layer types", kinds)
    return manifest


def _checked_config(layout: Layout, config_layer: dict[str, Any]) -> dict[str, Any]:
    """The config, every field checked: the disk format, command line, defaults, port."""
    config = parse_json(layout.read_blob(config_layer["digest"], config_layer["size"]), "config")
    if not isinstance(config, dict):
        raise invalid("config", config)
    disk_format, cmdline = config.get("disk_format"), config.get("cmdline")
    if disk_format is not None and not (
        isinstance(disk_format, str) and _DISK_FORMAT.fullmatch(disk_format)
    ):
        raise invalid("disk format", disk_format)
    if cmdline is not None and not (isinstance(cmdline, str) and len(cmdline) <= MAX_CMDLINE):
        raise invalid("kernel command line", cmdline)
    port = config.get("ready_port")
    if port is not None and not (type(port) is int and 1 <= port <= 65535):
        raise invalid("ready port (an integer 1 to 65535)", port)
    return {**config, "defaults": _defaults_of(config.get("defaults"))}


def _defaults_of(value: Any) -> VMSpec | None:
    if value is None:
        return None
    try:
        return VMSpec.model_validate(value)
    except (ValidationError, MedaError):  # meda's own checks raise InvalidRequest
        raise invalid("set of VM defaults", value) from None


def _copy_layers(
    layout: Layout, layers: list[dict[str, Any]], folder: Path, progress: Progress
) -> dict[str, Path]:
    """Each layer, verified, to the name its media type gives it (never one it carries)."""
    total, done = sum(layer["size"] for layer in layers), 0

    def meter(count: int) -> None:
        nonlocal done
        done += count
        progress(done, total)

    return {
        KINDS[la["mediaType"]]: layout.copy_blob(
            la["digest"], la["size"], folder / KINDS[la["mediaType"]], meter
        )
        for la in layers
    }
