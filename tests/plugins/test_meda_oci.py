"""The oci plugin against a real registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from meda_core.backends.roles import BackendContext
from meda_core.errors import BackendError
from meda_core.facade import Meda
from meda_core.images.blobs import sha256_file
from meda_core.inputs.references import Reference, parse_reference
from meda_core.settings import Settings
from meda_core.testing.conformance import RegistryConformance
from meda_oci import OciRegistry, formats
from meda_oci.client import RegistryClient, sha256_digest
from meda_oci.diskdigest import DiskDigest

MiB = 1024 * 1024


@pytest.fixture
def reference(oci_registry: str) -> Callable[[str], Reference]:
    return lambda tag: parse_reference(f"{oci_registry}/meda/test:{tag}")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDA_OCI_CHUNK_SIZE", str(MiB))  # many chunks from a small disk


class TestOciConformance(RegistryConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext, small_chunks: None) -> OciRegistry:
        return OciRegistry(backend_context)


@pytest.fixture
def meda(tmp_path: Path, small_chunks: None) -> Meda:
    return Meda(Settings(home=tmp_path / "home"))


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with path.open("wb") as f:
        f.write(os.urandom(3 * MiB))
        f.seek(8 * MiB)  # zero chunks 3..7 are not sent at all
        f.write(os.urandom(2 * MiB))
    return path


def chunk_layers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [la for la in manifest["layers"] if la["mediaType"] == formats.CHUNK_TYPE]


def published(meda: Meda, disk: Path, target: str) -> str:
    """Push ``disk`` as ``target`` and keep no local copy: the next pull moves bytes."""
    meda.images.import_files("published", disk=disk)
    meda.images.push("published", target)
    meda.images.remove("published")
    return target


def test_push_rmi_pull_round_trip_keeps_digests(meda: Meda, disk: Path, oci_registry: str) -> None:
    meda.images.import_files("rt", disk=disk)
    target = f"{oci_registry}/meda/rt:v1"
    _, pushed = meda.images.push("rt", target)
    manifest = json.loads(RegistryClient(parse_reference(target)).manifest("v1")[0])
    assert manifest["artifactType"] == formats.ARTIFACT_TYPE
    assert len(chunk_layers(manifest)) == 5  # 10 chunks, 5 of them zeros
    meda.images.remove("rt")
    pulled = meda.images.pull(target)
    assert pulled.digest == pushed
    assert pulled.disk is not None and sha256_file(pulled.disk) == sha256_file(disk)
    assert pulled.disk.name == sha256_file(disk)[7:]  # the digest taken while pulling
    assert pulled.disk.stat().st_blocks * 512 <= 5 * MiB  # the zeros stayed holes
    assert meda.images.pull(target).created == pulled.created  # already here: no work


def test_the_disk_digest_follows_chunks_written_out_of_order(tmp_path: Path) -> None:
    chunk, size = MiB, 6 * MiB + 4321
    path = tmp_path / "disk"
    with path.open("wb") as f:
        f.truncate(size)
    fd = os.open(path, os.O_RDWR)
    try:
        whole = DiskDigest(fd, size, chunk)
        for index in (4, 0, 6, 2, 1, 5, 3):  # 3 and 5 stay holes, 6 is short
            start = index * chunk
            length = min(chunk, size - start)
            if index not in (3, 5):
                os.pwrite(fd, os.urandom(length // 2), start)
                whole.written(index, length // 2)
                os.pwrite(fd, os.urandom(length - length // 2), start + length // 2)
            whole.ready(index)
        assert whole.result() == sha256_file(path)
    finally:
        os.close(fd)


def test_readiness_travels_in_the_config_meda_writes(
    meda: Meda, disk: Path, oci_registry: str, tmp_path: Path
) -> None:
    def config_of(target: str) -> dict[str, Any]:
        client = RegistryClient(parse_reference(target))
        config = json.loads(client.manifest("v1")[0])["config"]
        path = client.download(
            config["digest"], config["size"], tmp_path / "config", lambda n: None
        )
        return json.loads(path.read_bytes())  # type: ignore[no-any-return]

    meda.images.import_files("ssh", disk=disk, ready_port=22)
    meda.images.import_files("plain", disk=disk)
    for name in ("ssh", "plain"):
        meda.images.push(name, f"{oci_registry}/meda/{name}:v1")
        meda.images.remove(name)
    assert config_of(f"{oci_registry}/meda/ssh:v1")["ready_port"] == 22
    assert "ready_port" not in config_of(f"{oci_registry}/meda/plain:v1")  # as before
    assert meda.images.pull(f"{oci_registry}/meda/ssh:v1").ready_port == 22
    assert meda.images.pull(f"{oci_registry}/meda/plain:v1").ready_port is None


def test_interrupted_pull_leaves_no_image_and_resumes(
    meda: Meda, disk: Path, oci_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = published(meda, disk, f"{oci_registry}/meda/big:v1")
    downloads: list[str] = []
    original = RegistryClient.receive

    def flaky(self: RegistryClient, digest: str, *args):  # type: ignore[no-untyped-def]
        downloads.append(digest)
        if len(downloads) == 3:
            raise BackendError("connection dropped")
        return original(self, digest, *args)

    monkeypatch.setattr(RegistryClient, "receive", flaky)
    monkeypatch.setenv("MEDA_OCI_CONCURRENCY", "1")
    with pytest.raises(BackendError, match="dropped"):
        meda.images.pull(target)
    assert meda.images.list() == []  # nothing half-made is visible
    first_try = len(downloads)
    downloads.clear()
    monkeypatch.setattr(RegistryClient, "receive", original)
    monkeypatch.setattr(RegistryClient, "receive", _counting(original, downloads))
    pulled = meda.images.pull(target)
    assert pulled.disk is not None and sha256_file(pulled.disk) == sha256_file(disk)
    assert len(downloads) < 1 + 5  # config + 5 chunks: what was done is not fetched again
    assert first_try >= 3


def _counting(original, seen: list[str]):  # type: ignore[no-untyped-def]
    def download(self: RegistryClient, digest: str, *args):  # type: ignore[no-untyped-def]
        seen.append(digest)
        return original(self, digest, *args)

    return download


def test_corrupted_blob_is_refused(
    meda: Meda, disk: Path, oci_registry: str, tmp_path: Path
) -> None:
    target = published(meda, disk, f"{oci_registry}/meda/bad:v1")
    manifest = json.loads(RegistryClient(parse_reference(target)).manifest("v1")[0])
    victim = chunk_layers(manifest)[0]["digest"][7:]
    stored = next((tmp_path / "registry").rglob(f"blobs/sha256/{victim[:2]}/{victim}/data"))
    stored.write_bytes(b"not what was pushed" + stored.read_bytes()[19:])
    with pytest.raises(BackendError, match="failed verification"):
        meda.images.pull(target)
    assert meda.images.list() == []


def test_rust_meda_artifact_pulls_and_reassembles(
    meda: Meda, oci_registry: str, tmp_path: Path
) -> None:
    """One layer per file; a big file split into ``<file>.chunk.NNN`` layers; no compression."""
    ref = parse_reference(f"{oci_registry}/cirunlabs/legacy:v1")
    client = RegistryClient(ref)
    original = os.urandom(5 * MiB + 123)
    parts = [original[i : i + 2 * MiB] for i in range(0, len(original), 2 * MiB)]
    layers = []
    for index, part in reversed(list(enumerate(parts))):  # out of order on purpose
        digest = sha256_digest(part)
        client.upload(part, digest, len(part))
        layers.append(
            formats.descriptor(
                "application/vnd.cirunlabs.meda.base-image-chunk.v1",
                digest,
                len(part),
                **{formats.TITLE: f"base.raw.chunk.{index:03d}"},
            )
        )
    user_data = b"#cloud-config\n"
    client.upload(user_data, sha256_digest(user_data), len(user_data))
    layers.append(
        formats.descriptor(
            "application/vnd.cirunlabs.meda.user-data.v1",
            sha256_digest(user_data),
            len(user_data),
            **{formats.TITLE: "user-data"},
        )
    )
    empty = b"{}"
    client.upload(empty, sha256_digest(empty), 2)
    client.put_manifest(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": formats.RUST_ARTIFACT_TYPE,
            "config": formats.descriptor(
                "application/vnd.oci.empty.v1+json", sha256_digest(empty), 2
            ),
            "layers": layers,
        },
        "v1",
    )
    pulled = meda.images.pull(str(ref))
    assert pulled.disk is not None and pulled.disk_format == "raw"
    assert sha256_file(pulled.disk) == sha256_digest(original)


def test_not_a_meda_image_is_refused(meda: Meda, oci_registry: str) -> None:
    ref = parse_reference(f"{oci_registry}/other/thing:v1")
    client = RegistryClient(ref)
    empty = b"{}"
    client.upload(empty, sha256_digest(empty), 2)
    client.put_manifest(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": formats.descriptor(
                "application/vnd.oci.image.config.v1+json", sha256_digest(empty), 2
            ),
            "layers": [],
        },
        "v1",
    )
    with pytest.raises(BackendError, match="not a meda image"):
        meda.images.pull(str(ref))


def test_basic_auth_from_the_environment_and_docker_config(
    meda: Meda,
    disk: Path,
    oci_registry_with_auth: tuple[str, str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    address, user, password = oci_registry_with_auth
    meda.images.import_files("secret", disk=disk)
    target = f"{address}/private/secret:v1"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    with pytest.raises(Exception) as refused:
        meda.images.push("secret", target)
    assert password not in str(refused.value)

    monkeypatch.setenv("MEDA_REGISTRY_USERNAME", user)
    monkeypatch.setenv("MEDA_REGISTRY_PASSWORD", password)
    with pytest.raises(BackendError, match="MEDA_REGISTRY_HOST is not set"):
        meda.images.push("secret", target)  # credentials name their registry, or go nowhere
    monkeypatch.setenv("MEDA_REGISTRY_HOST", address)
    _, digest = meda.images.push("secret", target)
    for name in ("USERNAME", "PASSWORD", "HOST"):
        monkeypatch.delenv(f"MEDA_REGISTRY_{name}")

    docker = tmp_path / "docker"
    docker.mkdir()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {address: {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    meda.images.remove("secret")
    assert meda.images.pull(target).digest == digest
    assert password not in caplog.text


def test_two_pulls_of_one_reference_do_the_work_once(
    meda: Meda, disk: Path, oci_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = published(meda, disk, f"{oci_registry}/meda/twice:v1")
    downloads: list[str] = []
    monkeypatch.setattr(RegistryClient, "receive", _counting(RegistryClient.receive, downloads))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: meda.images.pull(target), range(2)))
    assert results[0].digest == results[1].digest
    assert len(downloads) == len(set(downloads)) == 1 + 5  # config + chunks, once each


def test_pull_killed_half_way_leaves_no_image_and_the_next_resumes(
    meda: Meda, oci_registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "many-chunks.raw"
    disk.write_bytes(os.urandom(48 * MiB))
    target = published(meda, disk, f"{oci_registry}/meda/killed:v1")
    env = {
        **os.environ,
        "MEDA_HOME": str(meda.settings.home),
        "MEDA_OCI_CONCURRENCY": "1",
        "MEDA_OCI_CHUNK_SIZE": str(MiB),
    }
    puller = subprocess.Popen(
        [sys.executable, "-m", "meda_cli.main", "pull", target],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done_dir = meda.settings.home / "pulls"
    deadline = time.monotonic() + 60
    while len(list(done_dir.glob("*/*/chunks-done/*"))) < 8:
        assert time.monotonic() < deadline and puller.poll() is None, "pull ended too soon"
        time.sleep(0.01)
    puller.kill()
    puller.wait()
    assert meda.images.list() == []
    downloads: list[str] = []
    monkeypatch.setattr(RegistryClient, "receive", _counting(RegistryClient.receive, downloads))
    pulled = meda.images.pull(target)
    assert pulled.disk is not None and sha256_file(pulled.disk) == sha256_file(disk)
    assert len(downloads) <= 1 + 48 - 8  # the config again, then only what was missing
