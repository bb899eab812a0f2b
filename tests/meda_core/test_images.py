from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from meda_core.backends.roles import ImageFiles
from meda_core.errors import ImageExists, InvalidRequest, UnsafeDisk
from meda_core.facade import Meda
from meda_core.images import service
from meda_core.inputs.references import parse_reference
from meda_core.models import CreateVMRequest, Image
from meda_core.settings import Settings
from meda_core.state.operations import no_progress
from meda_core.testing import disks


def test_import_copies_files_atomically(fake_meda: Meda, tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"k" * 100)
    initrd.write_bytes(b"i" * 50)
    image = fake_meda.images.import_files("tiny:v1", kernel=kernel, initrd=initrd, cmdline="x")
    assert image.kernel and image.kernel.read_bytes() == b"k" * 100
    assert image.size == 150 and image.ref == "tiny:v1"
    assert [i.ref for i in fake_meda.images.list()] == ["tiny:v1"]
    blobs = fake_meda.images.blobs
    assert blobs.digests() == {f"sha256:{image.kernel.name}", f"sha256:{image.initrd.name}"}
    assert not any((blobs.root / "staging").iterdir())
    with pytest.raises(ImageExists):
        fake_meda.images.import_files("tiny:v1", kernel=kernel)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"initrd": Path("/etc/hostname")}, {"kernel": Path("/nonexistent")}],
)
def test_bad_imports_are_refused_and_leave_nothing(fake_meda: Meda, kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidRequest):
        fake_meda.images.import_files("bad", **kwargs)
    assert fake_meda.images.list() == []
    assert fake_meda.images.blobs.digests() == set()


def test_disk_format_is_probed(fake_meda: Meda, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    assert fake_meda.images.import_files("raw", disk=disk).disk_format == "raw"


# ---- hostile disks: meda probes them itself and keeps none that names a host file ----


def _nothing_kept(meda: Meda) -> None:
    assert meda.images.list() == []
    assert meda.images.blobs.digests() == set()
    pulls = meda.settings.home / "pulls"
    assert not [p for p in pulls.iterdir() if p.is_dir()] if pulls.exists() else True


def _hostile(kind: str, where: Path, secret: Path) -> Path:
    if kind == "backing":
        return disks.backed_by(where / "disk.qcow2", secret)
    if kind == "data-file":
        return disks.with_data_file(where / "a-long-enough-name.qcow2", secret)
    return disks.foreign(where / f"disk.{kind}", kind)


HOSTILE = ["backing", "data-file", "vmdk", "vdi", "vhdx", "qed", "vpc", "qcow"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_import_refuses_a_disk_that_names_a_host_file_or_is_foreign(
    fake_meda: Meda, tmp_path: Path, host_secret: Path, kind: str
) -> None:
    with pytest.raises(UnsafeDisk):
        fake_meda.images.import_files("evil", disk=_hostile(kind, tmp_path, host_secret))
    _nothing_kept(fake_meda)


@pytest.mark.parametrize("claim", ["raw", "qcow2", None])
@pytest.mark.parametrize("kind", ["backing", "data-file", "vmdk"])
def test_pull_refuses_it_whatever_the_registry_claims(
    fake_meda: Meda, tmp_path: Path, host_secret: Path, kind: str, claim: str | None
) -> None:
    files = ImageFiles(disk=_hostile(kind, tmp_path, host_secret), disk_format=claim)
    fake_meda.backends.registry().push(files, parse_reference("evil:v1"), no_progress)
    with pytest.raises(UnsafeDisk):
        fake_meda.images.pull("evil:v1")
    _nothing_kept(fake_meda)


def test_the_probed_format_is_recorded_not_the_claimed_one(fake_meda: Meda, tmp_path: Path) -> None:
    qcow2 = disks.standalone(tmp_path / "disk.qcow2")
    files = ImageFiles(disk=qcow2, disk_format="raw")
    fake_meda.backends.registry().push(files, parse_reference("liar:v1"), no_progress)
    assert fake_meda.images.pull("liar:v1").disk_format == "qcow2"
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\xeb\x63\x90" + b"\0" * 4093)
    liar = ImageFiles(disk=raw, disk_format="qcow2")
    fake_meda.backends.registry().push(liar, parse_reference("liar:v2"), no_progress)
    assert fake_meda.images.pull("liar:v2").disk_format == "raw"


@pytest.mark.parametrize("claim", ["raw", "qcow2"])
def test_a_real_registry_pull_of_a_backed_qcow2_keeps_nothing(
    tmp_path: Path, oci_registry: str, host_secret: Path, claim: str
) -> None:
    meda = Meda(Settings(home=tmp_path / "home"))
    evil = disks.backed_by(tmp_path / "evil.qcow2", host_secret)
    target = parse_reference(f"{oci_registry}/attacker/evil:v1")
    meda.backends.registry().push(ImageFiles(disk=evil, disk_format=claim), target, no_progress)
    with pytest.raises(UnsafeDisk, match="backed by"):
        meda.images.pull(str(target))
    _nothing_kept(meda)


def test_an_image_stored_by_an_older_meda_is_not_booted_or_pushed(
    fake_meda: Meda, stored_by_older_meda: Image
) -> None:
    with pytest.raises(UnsafeDisk):
        fake_meda.vms.create(CreateVMRequest(name="victim", image="old"))
    assert fake_meda.vms.list() == []
    with pytest.raises(UnsafeDisk):
        fake_meda.images.push("old", "127.0.0.1:1/attacker/loot:v1", dry_run=True)
    registry = fake_meda.backends.registry()
    assert registry.manifest_digest(parse_reference("127.0.0.1:1/attacker/loot:v1")) is None


# ---- readiness: a property of the image ----


def test_import_sets_readiness_and_refuses_an_impossible_port(
    fake_meda: Meda, tmp_path: Path
) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    assert fake_meda.images.import_files("plain", kernel=kernel).ready_port is None
    assert fake_meda.images.import_files("ssh", kernel=kernel, ready_port=22).ready_port == 22
    assert fake_meda.images.import_files("none", kernel=kernel, ready_port=0).ready_port is None
    for bad in (-1, 65536):
        with pytest.raises(InvalidRequest, match="ready port"):
            fake_meda.images.import_files(f"bad{bad}", kernel=kernel, ready_port=bad)
    assert {i.ref for i in fake_meda.images.list()} == {"plain:latest", "ssh:latest", "none:latest"}


def test_pull_carries_readiness_from_the_push_unless_the_request_says(
    fake_meda: Meda, tmp_path: Path
) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    fake_meda.images.import_files("web", kernel=kernel, ready_port=8080)
    fake_meda.images.push("web", "fake.test/org/web:v1")
    assert fake_meda.images.pull("fake.test/org/web:v1").ready_port == 8080
    # Pulled again (nothing moves): the request's port replaces it; 0 says none.
    assert fake_meda.images.pull("fake.test/org/web:v1", ready_port=2222).ready_port == 2222
    assert fake_meda.images.get("web:v1").ready_port == 2222
    assert fake_meda.images.pull("fake.test/org/web:v1", ready_port=0).ready_port is None
    fake_meda.images.remove("web:v1")
    assert fake_meda.images.pull("fake.test/org/web:v1", ready_port=0).ready_port is None


def test_an_image_from_a_vm_inherits_readiness_unless_given(
    fake_meda: Meda, tmp_path: Path
) -> None:
    disk = tmp_path / "base.img"
    disk.write_text("fake 1048576 \n")
    fake_meda.images.import_files("base", disk=disk, ready_port=22)
    fake_meda.vms.create(CreateVMRequest(name="src", image="base"))
    images = fake_meda.images
    assert images.create_from_vm("src", "same", "v1", None, None).ready_port == 22
    assert images.create_from_vm("src", "web", "v1", None, None, 80).ready_port == 80
    assert images.create_from_vm("src", "none", "v1", None, None, 0).ready_port is None
    fake_meda.vms.delete_all()


def test_a_pull_stores_the_disk_under_the_digest_its_backend_took_while_writing(
    fake_meda: Meda, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xeb\x63\x90" + b"\1" * 8189)
    registry = fake_meda.backends.registry()
    registry.push(ImageFiles(disk=disk), parse_reference("hashed:v1"), no_progress)
    known = "sha256:" + hashlib.sha256(disk.read_bytes()).hexdigest()
    pull = type(registry).pull
    monkeypatch.setattr(
        type(registry),
        "pull",
        lambda self, *args: dataclasses.replace(pull(self, *args), disk_digest=known),
    )
    hashed: list[Path] = []
    monkeypatch.setattr(service, "sha256_file", lambda path: hashed.append(path) or "")
    image = fake_meda.images.pull("hashed:v1")
    assert image.disk is not None and image.disk.name == known[7:]
    assert hashed == []  # the disk is not read again to be named
