"""The fast ``run``: cold unless the image is ready to clone; templates built in the
background, keyed by image and resources, retired with their image; failures remembered."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meda_core.backends.roles import DEVICE_LAYOUT
from meda_core.errors import BackendError
from meda_core.facade import Meda
from meda_core.host.locks import exclusive, remove_held, try_exclusive
from meda_core.interface.calls import LocalApi
from meda_core.models import Image, RunInfo, RunRequest
from meda_core.testing.fakes import FakeHypervisor
from meda_core.vms import readiness
from meda_core.vms import templates as warmrun
from meda_core.vms.templates import TemplateJob

#: The seed's ``POST /images/run`` body (less registry and org: no internet here).
SEED_BODY = {
    "image": "default",
    "name": "r1",
    "user_data": None,
    "no_start": False,
    "memory": "512M",
    "cpus": 2,
    "disk": "10G",
}


@pytest.fixture(autouse=True)
def clonable(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake network isolates nothing; the fake hypervisor snapshots.
    monkeypatch.setattr(warmrun, "can_clone", lambda backends: True)


@pytest.fixture
def ready_at_once(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The fake VMs have no network to probe: every wait succeeds; what was waited on."""
    waits: list[tuple[str, int]] = []

    def wait(ns: str | None, ip: str, port: int, *args: object) -> float:
        waits.append((ip, port))
        return 0.0

    monkeypatch.setattr(readiness, "wait_until_ready", wait)
    return waits


@pytest.fixture
def builds(fake_meda: Meda) -> list[TemplateJob]:
    """Builds runs ask for, kept here instead of started (a test runs them itself)."""
    jobs: list[TemplateJob] = []
    fake_meda.warm_runs.background = jobs.append
    return jobs


def ready_image(meda: Meda, port: int | None = 80) -> None:
    image = meda.images.get("default")
    image.ready_port = port
    meda.store.put_image(image)


def run(meda: Meda, name: str, **fields: object) -> RunInfo:
    request = RunRequest.model_validate({"image": "default", "name": name, **fields})
    result = LocalApi(meda).run_image(request)
    assert result.vm is not None and result.vm.state == "running"
    return result.run


def test_the_seeds_body_runs_an_image_without_readiness_cold(
    fake_meda: Meda, fake_image: str, builds: list[TemplateJob]
) -> None:
    result = LocalApi(fake_meda).run_image(RunRequest.model_validate(SEED_BODY))
    assert result.success and result.vm is not None and result.vm.state == "running"
    assert result.run.path == "cold" and result.run.template is None
    assert "no readiness signal" in result.run.reason and "cold start" in result.message
    assert builds == []  # nothing waits, nothing is built
    assert [vm.name for vm in fake_meda.vms.list()] == ["r1"]


def test_first_run_boots_cold_and_leaves_the_template_to_a_build(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    ready_at_once: list[tuple[str, int]],
) -> None:
    ready_image(fake_meda)
    first = run(fake_meda, "a", memory="256M")
    assert first.path == "cold" and first.template and "background" in first.reason
    assert [job.name for job in builds] == [first.template]
    assert fake_meda.store.get_vm(first.template) is None  # the caller did not wait for it
    assert fake_meda.vms.get("a").clone_of is None

    assert fake_meda.warm_runs.build(builds[0]).outcome == "built"
    # The caller's guest answers first (it boots alone), then the template's.
    template_ip = fake_meda.vms.get(first.template).ip
    assert ready_at_once == [(fake_meda.vms.get("a").ip, 80), (template_ip, 80)]
    second = run(fake_meda, "b", memory="256M")
    assert second.path == "warm" and second.template == first.template
    assert fake_meda.vms.get("b").clone_of == first.template
    assert fake_meda.warm_runs.build(builds[0]).outcome == "ready"  # a second build: no work

    other = run(fake_meda, "c", memory="512M")  # another shape: another template
    assert other.path == "cold" and other.template not in (None, first.template)
    assert fake_meda.vms.get("c").spec.memory == "512M"  # never the first caller's size
    fake_meda.vms.delete_all()


def test_the_request_may_name_the_port_for_an_image_without_one(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    ready_at_once: list[tuple[str, int]],
) -> None:
    first = run(fake_meda, "a", ready_port=8080)
    assert first.path == "cold" and first.ready_port == 8080 and len(builds) == 1
    fake_meda.warm_runs.build(builds[0])
    assert [port for _, port in ready_at_once] == [8080, 8080]
    assert run(fake_meda, "b", ready_port=8080).path == "warm"
    assert run(fake_meda, "c").path == "cold"  # the image's own: none
    ready_image(fake_meda, 22)
    assert run(fake_meda, "d", ready_port=0).template is None  # 0: no readiness, cold
    fake_meda.vms.delete_all()


def test_a_run_never_waits_for_a_template_being_built(
    fake_meda: Meda, fake_image: str, builds: list[TemplateJob]
) -> None:
    ready_image(fake_meda)
    first = run(fake_meda, "a")
    assert first.template is not None
    lock = fake_meda.settings.home / "templates" / f"{first.template}.lock"
    held, release = threading.Event(), threading.Event()

    def builder() -> None:  # another thread (or process) holds the build lock
        with exclusive(lock):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=builder)
    thread.start()
    try:
        held.wait(10)
        started = time.monotonic()
        second = run(fake_meda, "b")
        assert time.monotonic() - started < 5
        assert second.path == "cold" and "being built" in second.reason
        assert fake_meda.warm_runs.build(builds[0]).outcome == "skipped"
    finally:
        release.set()
        thread.join()
    fake_meda.vms.delete_all()


def test_a_failed_build_is_remembered_and_tried_again_later(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(ns: str | None, ip: str, port: int, *args: object) -> float:
        raise BackendError(f"the guest at {ip} did not answer on port {port} in 1s")

    monkeypatch.setattr(readiness, "wait_until_ready", never)
    ready_image(fake_meda)
    first = run(fake_meda, "a")
    assert first.template is not None
    with pytest.raises(BackendError, match="did not answer"):
        fake_meda.warm_runs.build(builds[0])
    assert fake_meda.store.get_vm(first.template) is None  # the half-built one is gone
    second = run(fake_meda, "b")
    assert second.path == "cold" and "did not answer on port 80" in second.reason
    assert "MEDA_RUN_TEMPLATE_RETRY" in second.reason
    assert len(builds) == 1  # no second build while the failure is fresh
    assert fake_meda.warm_runs.build(builds[0]).outcome == "skipped"

    failed = fake_meda.settings.home / "templates" / f"{first.template}.failed"
    record = json.loads(failed.read_text())
    failed.write_text(json.dumps({**record, "at": record["at"] - 3601}))  # an hour later
    assert run(fake_meda, "c").template == first.template and len(builds) == 2
    assert not failed.exists()
    fake_meda.vms.delete_all()


def test_an_unreadable_failure_record_does_not_stop_runs(
    fake_meda: Meda, fake_image: str, builds: list[TemplateJob]
) -> None:
    ready_image(fake_meda)
    first = run(fake_meda, "a")
    failed = fake_meda.settings.home / "templates" / f"{first.template}.failed"
    for junk in ("not json", "[1, 2]", '{"at": "soon"}', '{"error": "x"}'):
        failed.write_text(junk)
        assert "background" in run(fake_meda, f"r{len(builds)}").reason
    assert len(builds) == 5
    fake_meda.vms.delete_all()


def test_a_build_called_off_at_shutdown_leaves_nothing_and_no_failure(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(readiness, "answers", lambda *args: False)  # a port never opened
    ready_image(fake_meda)
    first = run(fake_meda, "a")
    timer = threading.Timer(0.5, fake_meda.warm_runs.shutdown)
    timer.start()
    started = time.monotonic()
    with pytest.raises(readiness.Interrupted):  # while its template boots
        fake_meda.warm_runs.build(builds[0].model_copy(update={"after": None}))
    assert time.monotonic() - started < 5  # not MEDA_RUN_READY_TIMEOUT
    assert fake_meda.store.get_vm(first.template or "") is None
    assert not list((fake_meda.settings.home / "templates").glob("*.failed"))
    assert [vm.name for vm in fake_meda.vms.list()] == ["a"]  # the caller's VM untouched
    fake_meda.vms.delete_all()


def test_meda_builds_templates_as_background_operations(
    fake_meda: Meda, fake_image: str, ready_at_once: list[tuple[str, int]]
) -> None:
    ready_image(fake_meda)
    first = run(fake_meda, "a")
    [op] = fake_meda.operations.list().operations
    assert op.kind == "template"
    done = fake_meda.operations.wait(op.id, 30)
    assert done.state == "succeeded", done.error
    assert done.result is not None
    assert (done.result["template"], done.result["outcome"]) == (first.template, "built")
    assert run(fake_meda, "b").path == "warm"
    fake_meda.vms.delete_all()


def test_a_job_for_an_image_that_changed_since_is_skipped(
    fake_meda: Meda, fake_image: str, builds: list[TemplateJob]
) -> None:
    ready_image(fake_meda)
    run(fake_meda, "a")
    ready_image(fake_meda, 81)  # the image's record changed (as a new pull would)
    done = fake_meda.warm_runs.build(builds[0])
    assert done.outcome == "skipped" and "changed" in done.reason
    fake_meda.vms.delete_all()


def test_a_changed_image_retires_unused_templates(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    ready_at_once: list[tuple[str, int]],
) -> None:
    ready_image(fake_meda)
    old = run(fake_meda, "a").template
    fake_meda.warm_runs.build(builds[-1])
    fake_meda.vms.delete("a")
    image = fake_meda.images.get("default")
    image.cmdline = f"{image.cmdline} v2"  # a newer version boots something else
    fake_meda.store.put_image(image)
    new = run(fake_meda, "b").template
    assert new not in (None, old)
    fake_meda.warm_runs.build(builds[-1])
    assert fake_meda.store.get_vm(old or "") is None  # retired: no clone needed it
    fake_meda.vms.delete_all()


def test_a_template_of_older_devices_is_retired(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    ready_at_once: list[tuple[str, int]],
) -> None:
    """A template an older meda snapshotted with other devices cannot be restored: the next
    build of its image deletes it when no clone rests on it."""
    ready_image(fake_meda)
    run(fake_meda, "a")
    fake_meda.warm_runs.build(builds[-1])
    old = builds[-1].name
    fake_meda.vms.delete("a")
    template = fake_meda.store.require_vm(old)
    assert template.snapshot is not None
    template.snapshot.layout = DEVICE_LAYOUT - 1
    fake_meda.store.save_vm(template)
    run(fake_meda, "b", memory="256M")  # another shape: another build, which retires it
    fake_meda.warm_runs.build(builds[-1])
    assert fake_meda.store.get_vm(old) is None
    fake_meda.vms.delete_all()


def test_the_files_of_a_gone_template_go_at_the_next_build(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    ready_at_once: list[tuple[str, int]],
) -> None:
    ready_image(fake_meda)
    run(fake_meda, "a")
    fake_meda.warm_runs.build(builds[-1])
    gone = builds[-1].name
    folder = fake_meda.settings.home / "templates"
    for suffix in ("log", "job.json"):  # as a detached builder leaves them
        (folder / f"{gone}.{suffix}").write_text("x")
    fake_meda.vms.delete_all()  # the template too
    for mark in folder.glob(f"{gone}.*"):
        os.utime(mark, (time.time() - 120, time.time() - 120))
    assert sorted(p.name for p in folder.glob(f"{gone}.*")) == [
        f"{gone}.job.json",
        f"{gone}.lock",
        f"{gone}.log",
    ]
    run(fake_meda, "b", memory="256M")
    fake_meda.warm_runs.build(builds[-1])
    assert list(folder.glob(f"{gone}.*")) == []
    assert (folder / f"{builds[-1].name}.lock").exists()  # the live one's stays
    fake_meda.vms.delete_all()


def test_a_lock_removed_by_its_holder_excludes_nobody_who_opened_it_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second holder that opened the lock file before its holder removed it gets the lock
    on the removed file only: that must not count as holding the lock."""
    lock = tmp_path / "t.lock"
    real_open = Path.open

    def open_then_lose_it(self: Path, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, *args, **kwargs)
        if self == lock:
            remove_held(lock)  # the first holder removes it between open and flock
        return handle

    monkeypatch.setattr(Path, "open", open_then_lose_it)
    with try_exclusive(lock) as held:
        assert not held


def test_garbage_collection_keeps_what_clones_rest_on(
    fake_meda: Meda, tmp_path: Path, builds: list[TemplateJob], ready_at_once: list[tuple[str, int]]
) -> None:
    disk = tmp_path / "base.img"
    disk.write_text("fake 1048576 \n")
    fake_meda.images.import_files("default", disk=disk, ready_port=80)
    run(fake_meda, "a")
    fake_meda.warm_runs.build(builds[0])
    assert run(fake_meda, "b").path == "warm"
    base = fake_meda.images.get("default").disk
    assert base is not None
    fake_meda.store.delete_image("default", "latest")  # as a pull of a new version would
    fake_meda.images.collect_garbage()
    assert base.exists()  # the clone's chain: its overlay → the frozen disk → this blob
    fake_meda.vms.delete_all()


def test_a_push_or_a_repull_of_the_same_bytes_keeps_the_template(tmp_path: Path) -> None:
    image = Image(
        name="img", tag="v1", kernel=tmp_path / "k", cmdline="x", created=datetime.now(UTC)
    )
    moved = image.model_copy(
        update={"registry": "ghcr.io", "org": "o", "digest": "sha256:" + "0" * 64, "size": 9}
    )
    assert warmrun.image_fingerprint(moved) == warmrun.image_fingerprint(image)
    for booted in ({"cmdline": "x quiet"}, {"initrd": tmp_path / "i"}):
        other = image.model_copy(update=booted)
        assert warmrun.image_fingerprint(other) != warmrun.image_fingerprint(image), booted


@pytest.fixture
def agent_pings(fake_meda: Meda, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The VMs whose agent was asked whether it answers (the fake agent's answer is kept)."""
    asked: list[str] = []
    answers = fake_meda.guest.answers

    def spy(name: str, timeout: float) -> bool:
        asked.append(name)
        return answers(name, timeout)

    monkeypatch.setattr(fake_meda.guest, "answers", spy)
    return asked


def test_a_run_may_take_its_agent_answering_as_the_readiness_signal(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    ready_at_once: list[tuple[str, int]],
    agent_pings: list[str],
) -> None:
    """An image without a ready port: its template is snapshotted once its agent answers."""
    first = run(fake_meda, "a", ready_agent=True)
    assert first.path == "cold" and first.template and "its guest's agent" in first.reason
    assert first.ready_agent and first.ready_port is None
    [job] = builds
    assert job.ready_agent and job.signal == "agent"
    built = fake_meda.warm_runs.build(job)
    assert built.outcome == "built" and "once its agent answers" in built.reason
    assert agent_pings == ["a", first.template] and ready_at_once == []  # no port probed
    second = run(fake_meda, "b", ready_agent=True)
    assert second.path == "warm" and second.template == first.template and second.ready_agent
    assert run(fake_meda, "c").template is None  # without it: no signal, cold
    port = run(fake_meda, "d", ready_port=22)
    assert port.template not in (None, first.template)  # another signal, another template
    fake_meda.vms.delete_all()


@pytest.mark.parametrize("meda_settings", [{"run_ready_timeout": 0.5}], indirect=True)
def test_a_guest_whose_agent_never_answers_is_a_failed_build(
    fake_meda: Meda,
    fake_image: str,
    builds: list[TemplateJob],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(FakeHypervisor, "agent", False)  # no channel: no agent answers
    first = run(fake_meda, "a", ready_agent=True)
    with pytest.raises(BackendError, match="did not answer"):
        fake_meda.warm_runs.build(builds[0])
    assert first.template is not None and fake_meda.store.get_vm(first.template) is None
    again = run(fake_meda, "b", ready_agent=True)
    assert again.path == "cold" and "did not answer" in again.reason
    fake_meda.vms.delete_all()


def test_ready_agent_without_an_agent_backend_runs_cold(
    fake_meda: Meda, fake_image: str, builds: list[TemplateJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_meda.backends, "agent", lambda: None)
    info = run(fake_meda, "a", ready_agent=True)
    assert info.path == "cold" and "no agent backend" in info.reason and builds == []
    fake_meda.vms.delete_all()


def test_ready_agent_and_a_ready_port_are_refused_together() -> None:
    with pytest.raises(ValidationError, match="two readiness signals"):
        RunRequest.model_validate(
            {"image": "i", "name": "x", "ready_agent": True, "ready_port": 22}
        )
    assert RunRequest.model_validate({"image": "i", "name": "x", "ready_agent": True}).ready_agent
