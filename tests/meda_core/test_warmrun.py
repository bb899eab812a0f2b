"""The fast ``run``: templates keyed by image and resources, retired with their image."""

from __future__ import annotations

from pathlib import Path

import pytest

from meda_core import readiness
from meda_core.app import Meda
from meda_core.models import RunRequest


@pytest.fixture(autouse=True)
def guests_ready_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake VMs have no network to probe.
    monkeypatch.setattr(readiness, "wait_until_ready", lambda *args: 0.0)


def run(meda: Meda, name: str, **fields: object) -> str | None:
    request = RunRequest(image="default", name=name, **fields)  # type: ignore[arg-type]
    vm = meda.warm_runs.run(meda.images.get("default"), request)
    return vm.clone_of


def test_one_template_per_image_and_shape(fake_meda: Meda, fake_image: str) -> None:
    first = run(fake_meda, "a", memory="256M")
    assert first is not None and run(fake_meda, "b", memory="256M") == first
    other = run(fake_meda, "c", memory="512M")
    assert other not in (None, first)
    assert fake_meda.vms.get("c").spec.memory == "512M"  # never the first caller's size
    template = fake_meda.vms.get(first)
    assert template.template and template.state == "stopped" and template.snapshot
    fake_meda.vms.delete_all()


def test_a_changed_image_retires_unused_templates(fake_meda: Meda, fake_image: str) -> None:
    old = run(fake_meda, "a")
    fake_meda.vms.delete("a")
    image = fake_meda.images.get("default")
    image.digest = "sha256:" + "1" * 64  # as a pull of a newer version records it
    fake_meda.store.put_image(image)
    new = run(fake_meda, "b")
    assert new not in (None, old)
    assert fake_meda.store.get_vm(old) is None  # retired: no clone needed it
    fake_meda.vms.delete_all()


def test_garbage_collection_keeps_what_clones_rest_on(fake_meda: Meda, tmp_path: Path) -> None:
    disk = tmp_path / "base.img"
    disk.write_text("fake 1048576 \n")
    fake_meda.images.import_files("default", disk=disk)
    run(fake_meda, "a")
    base = fake_meda.images.get("default").disk
    assert base is not None
    fake_meda.store.delete_image("default", "latest")  # as a pull of a new version would
    fake_meda.images.collect_garbage()
    assert base.exists()  # the clone's chain: its overlay → the frozen disk → this blob
    fake_meda.vms.delete_all()
