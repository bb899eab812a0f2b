"""What the oci-layout backend writes is an OCI image layout, and what it reads is checked:
a layout is treated as hostile (digests, sizes, paths, links, formats)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from meda_oci_layout import LayoutRegistry
from meda_oci_layout.backend import ARTIFACT_TYPE, KINDS
from meda_oci_layout.layout import MANIFEST_TYPE, MAX_JSON, REF_NAME, Layout, descriptor

from meda_core.plugin import BackendError, ImageFiles, MedaError, Reference, VMSpec, no_progress

MiB = 1024 * 1024
Refs = Callable[[str], Reference]


@pytest.fixture
def files(tmp_path: Path) -> ImageFiles:
    disk, kernel = tmp_path / "disk.img", tmp_path / "vmlinuz"
    with disk.open("wb") as f:
        f.write(b"boot" * 1024)
        f.seek(8 * MiB)  # a hole
        f.write(b"end")
    kernel.write_bytes(os.urandom(4096))
    return ImageFiles(
        disk=disk,
        disk_format="raw",
        kernel=kernel,
        cmdline="console=ttyS0",
        defaults=VMSpec(memory="512M", cpus=2),
        ready_port=22,
    )


@pytest.fixture
def pushed(backend: LayoutRegistry, reference: Refs, files: ImageFiles) -> str:
    return backend.push(files, reference("v1"), no_progress)


def _json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _manifest(root: Path, digest: str) -> dict[str, Any]:
    return _json(root / "tests" / "guest" / "blobs" / "sha256" / digest.split(":")[1])  # type: ignore[no-any-return]


def _retag(root: Path, manifest: dict[str, Any], tag: str = "v1") -> None:
    """Make ``tag`` name ``manifest`` (as an attacker with write access to the folder would)."""
    layout = Layout(root, "tests/guest")
    digest, size = layout.add_bytes(json.dumps(manifest).encode())
    layout.tag(descriptor(MANIFEST_TYPE, digest, size), tag)


def _pull(backend: LayoutRegistry, ref: Reference, tmp_path: Path) -> ImageFiles:
    workdir = tmp_path / "pull"
    workdir.mkdir(exist_ok=True)
    return backend.pull(ref, workdir, no_progress)


# ---- what is written ----


def test_a_push_makes_an_oci_image_layout(layout_root: Path, pushed: str) -> None:
    folder = layout_root / "tests" / "guest"
    assert _json(folder / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = _json(folder / "index.json")
    assert index["schemaVersion"] == 2
    [entry] = index["manifests"]
    assert entry["digest"] == pushed and entry["annotations"] == {REF_NAME: "v1"}
    for blob in (folder / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    manifest = _manifest(layout_root, pushed)
    assert manifest["mediaType"] == MANIFEST_TYPE and manifest["artifactType"] == ARTIFACT_TYPE
    assert [la["mediaType"] for la in manifest["layers"]] == list(KINDS)[:2]


def test_a_tag_names_one_manifest_and_tags_live_side_by_side(
    backend: LayoutRegistry, reference: Refs, files: ImageFiles, layout_root: Path, pushed: str
) -> None:
    again = backend.push(files, reference("v1"), no_progress)
    other = backend.push(ImageFiles(kernel=files.kernel), reference("v2"), no_progress)
    index = _json(layout_root / "tests" / "guest" / "index.json")
    assert sorted(m["annotations"][REF_NAME] for m in index["manifests"]) == ["v1", "v2"]
    assert backend.manifest_digest(reference("v1")) == again
    assert backend.manifest_digest(reference("v2")) == other != again


def test_everything_comes_back_and_holes_stay_holes(
    backend: LayoutRegistry, reference: Refs, files: ImageFiles, pushed: str, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    pulled = backend.pull(reference("v1"), tmp_path, lambda done, total: seen.append((done, total)))
    assert pulled.defaults == files.defaults and pulled.ready_port == 22
    assert pulled.disk is not None and files.disk is not None
    assert pulled.disk.stat().st_size == files.disk.stat().st_size
    assert pulled.disk.stat().st_blocks * 512 < 2 * MiB  # the 8 MiB hole was not written
    assert seen[-1][0] == seen[-1][1]


def test_a_pull_by_digest(backend: LayoutRegistry, pushed: str, tmp_path: Path) -> None:
    ref = Reference("layout.invalid", "tests/guest", "ignored", pushed)
    assert backend.manifest_digest(ref) == pushed
    assert _pull(backend, ref, tmp_path).digest == pushed


def test_the_root_defaults_to_a_folder_in_meda_home(
    backend: LayoutRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDA_OCI_LAYOUT_ROOT")
    assert backend.root == backend.context.settings.home / "oci-layout"


# ---- what is read: blobs ----


def _blob(layout_root: Path, digest: str) -> Path:
    return layout_root / "tests" / "guest" / "blobs" / "sha256" / digest.split(":")[1]


def test_a_changed_blob_fails_verification_and_leaves_nothing(
    backend: LayoutRegistry, reference: Refs, layout_root: Path, pushed: str, tmp_path: Path
) -> None:
    disk = _blob(layout_root, _manifest(layout_root, pushed)["layers"][0]["digest"])
    with disk.open("r+b") as f:
        f.write(b"BOOT")
    with pytest.raises(BackendError, match="failed verification"):
        _pull(backend, reference("v1"), tmp_path)
    assert not (tmp_path / "pull" / "oci-layout" / "disk").exists()


def test_a_blob_longer_than_its_descriptor_is_refused(
    backend: LayoutRegistry, reference: Refs, layout_root: Path, pushed: str, tmp_path: Path
) -> None:
    kernel = _blob(layout_root, _manifest(layout_root, pushed)["layers"][1]["digest"])
    with kernel.open("ab") as f:
        f.write(b"more")
    with pytest.raises(BackendError, match="larger than"):
        _pull(backend, reference("v1"), tmp_path)


def test_a_blob_that_links_out_of_the_root_is_not_read(
    backend: LayoutRegistry, reference: Refs, layout_root: Path, pushed: str, tmp_path: Path
) -> None:
    kernel = _blob(layout_root, _manifest(layout_root, pushed)["layers"][1]["digest"])
    outside = tmp_path / "secret"
    outside.write_bytes(kernel.read_bytes())  # even the right bytes
    kernel.unlink()
    kernel.symlink_to(outside)
    with pytest.raises(BackendError, match="leads out of the OCI layout root"):
        _pull(backend, reference("v1"), tmp_path)


def test_a_repository_folder_that_links_out_is_neither_read_nor_written(
    backend: LayoutRegistry, reference: Refs, files: ImageFiles, layout_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    layout_root.mkdir()
    (layout_root / "tests").symlink_to(outside)
    with pytest.raises(BackendError, match="leads out"):
        backend.push(files, reference("v1"), no_progress)
    with pytest.raises(BackendError, match="leads out"):
        backend.manifest_digest(reference("v1"))
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("repository", ["../etc", "tests/../../x", "tests//guest", "/abs", "A"])
def test_a_repository_that_is_not_a_plain_path_is_refused(
    backend: LayoutRegistry, repository: str
) -> None:
    with pytest.raises(BackendError, match="invalid repository"):
        backend.manifest_digest(Reference("layout.invalid", repository, "v1"))


# ---- what is read: the index, the manifest and the config ----

BAD_DIGESTS = [
    "sha256:../../../../etc/passwd",
    "sha256:" + "A" * 64,
    "sha256:" + "0" * 63,
    "sha512:" + "0" * 64,
    "../" + "0" * 64,
    7,
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_an_index_entry_with_a_bad_digest_touches_no_path(
    backend: LayoutRegistry, reference: Refs, layout_root: Path, pushed: str, digest: object
) -> None:
    index_file = layout_root / "tests" / "guest" / "index.json"
    index = _json(index_file)
    index["manifests"][0]["digest"] = digest
    index_file.write_text(json.dumps(index))
    with pytest.raises(BackendError, match="invalid manifest digest"):
        backend.manifest_digest(reference("v1"))


@pytest.mark.parametrize("size", [-1, MAX_JSON + 1, "12", 1.5, None])
def test_an_index_entry_with_a_bad_size_is_refused(
    backend: LayoutRegistry, reference: Refs, layout_root: Path, pushed: str, size: object
) -> None:
    index_file = layout_root / "tests" / "guest" / "index.json"
    index = _json(index_file)
    index["manifests"][0]["size"] = size
    index_file.write_text(json.dumps(index))
    with pytest.raises(BackendError, match="invalid manifest size"):
        backend.manifest_digest(reference("v1"))


def test_an_index_too_big_to_be_one_is_not_read_whole(
    backend: LayoutRegistry, reference: Refs, layout_root: Path, pushed: str
) -> None:
    index_file = layout_root / "tests" / "guest" / "index.json"
    index_file.write_text(" " * (MAX_JSON + 1))
    with pytest.raises(BackendError, match="larger than"):
        backend.manifest_digest(reference("v1"))


def _layer(manifest: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**manifest, "layers": [{**manifest["layers"][0], **changes}, *manifest["layers"][1:]]}


MANIFEST_ATTACKS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "layer digest out of the folder": (
        lambda m: _layer(m, digest="sha256:../../../../../etc/shadow"),
        "invalid layer digest",
    ),
    "layer larger than the limit": (lambda m: _layer(m, size=2**62), "invalid layer size"),
    "unknown layer type": (lambda m: _layer(m, mediaType="text/x-shell"), "layer types"),
    "the same file twice": (
        lambda m: {**m, "layers": [m["layers"][0], m["layers"][0]]},
        "layer types",
    ),
    "not a meda image": (lambda m: {**m, "artifactType": "x"}, "not a meda image"),
    "config digest": (
        lambda m: {**m, "config": {**m["config"], "digest": "sha256:" + "x" * 64}},
        "invalid config digest",
    ),
    "config too big": (
        lambda m: {**m, "config": {**m["config"], "size": MAX_JSON + 1}},
        "invalid config size",
    ),
}


@pytest.mark.parametrize("attack", MANIFEST_ATTACKS)
def test_a_hostile_manifest_is_refused_before_any_layer_moves(
    backend: LayoutRegistry,
    reference: Refs,
    layout_root: Path,
    pushed: str,
    tmp_path: Path,
    attack: str,
) -> None:
    change, message = MANIFEST_ATTACKS[attack]
    _retag(layout_root, change(_manifest(layout_root, pushed)))
    with pytest.raises(BackendError, match=message):
        _pull(backend, reference("v1"), tmp_path)
    assert not (tmp_path / "pull" / "oci-layout").exists()


def test_a_layer_title_does_not_choose_where_it_lands(
    backend: LayoutRegistry, reference: Refs, layout_root: Path, pushed: str, tmp_path: Path
) -> None:
    manifest = _manifest(layout_root, pushed)
    title = {"org.opencontainers.image.title": "../../../escaped"}
    _retag(layout_root, _layer(manifest, annotations=title))
    pulled = _pull(backend, reference("v1"), tmp_path)
    assert pulled.disk == tmp_path / "pull" / "oci-layout" / "disk"
    assert not list(tmp_path.rglob("escaped"))


CONFIG_ATTACKS: dict[str, dict[str, Any]] = {
    "disk format": {"disk_format": "../qcow2"},
    "kernel command line": {"cmdline": "x" * 5000},
    "ready port": {"ready_port": 70000},
    "set of VM defaults": {"defaults": {"memory": "lots"}},
    "a disk without a format": {"disk_format": None},
}


@pytest.mark.parametrize("attack", CONFIG_ATTACKS)
def test_a_hostile_config_is_refused(
    backend: LayoutRegistry,
    reference: Refs,
    layout_root: Path,
    pushed: str,
    tmp_path: Path,
    attack: str,
) -> None:
    layout = Layout(layout_root, "tests/guest")
    manifest = _manifest(layout_root, pushed)
    config = {
        **json.loads(layout.read_blob(manifest["config"]["digest"])),
        **CONFIG_ATTACKS[attack],
    }
    digest, size = layout.add_bytes(json.dumps(config).encode())
    _retag(
        layout_root, {**manifest, "config": {**manifest["config"], "digest": digest, "size": size}}
    )
    with pytest.raises(BackendError, match=attack):
        _pull(backend, reference("v1"), tmp_path)


def test_a_blob_limit_from_the_settings(
    backend: LayoutRegistry,
    reference: Refs,
    pushed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDA_OCI_LAYOUT_MAX_BLOB_SIZE", str(MiB))  # the disk is 8 MiB
    with pytest.raises(BackendError, match="invalid layer size"):
        _pull(backend, reference("v1"), tmp_path)


def test_a_missing_tag_is_not_found(
    backend: LayoutRegistry, reference: Refs, pushed: str, tmp_path: Path
) -> None:
    assert backend.manifest_digest(reference("v9")) is None
    with pytest.raises(MedaError) as raised:
        _pull(backend, reference("v9"), tmp_path)
    assert raised.value.http_status == 404
