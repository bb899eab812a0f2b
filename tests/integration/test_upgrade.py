"""A MEDA_HOME written by an older meda opens with this one: VMs, images, leases, forwards
and templates intact and usable; one from a newer meda is refused. Two old homes: one from
before numbered migrations, one from before the core's redesign (disks named their format)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_core.state import migrations
from meda_core.state.store import StateStore
from meda_core.testing.guest import HTTP_PAGE
from meda_core.testing.host import free_port, processes_mentioning
from tests.integration.conftest import Server
from tests.integration.test_network import guest_ip, http_get, start_vm

WEB_PORT = free_port()  # forwards also listen on the host's loopback
IDLE_PORT = free_port()  # forwards also listen on the host's loopback

pytestmark = pytest.mark.vm

#: The last commit before numbered migrations: its state.db is version 1.
BASELINE = "788048d5c87c179ac75cf9f3ff78b51320fbdffa"
#: The last commit before the core was split into folders and disks named their format:
#: its state.db is version 2, every VM's disk ``disk.qcow2``.
BEFORE_REDESIGN = "2d93d1692b6b89753867a16e16b3f0a4efa5b55c"
REPO = Path(__file__).resolve().parents[2]


def _worktree(commit: str, parent: Path) -> Iterator[Path]:
    """A git worktree of ``commit`` (needs the repository's history)."""
    tree = parent / "meda"
    added = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
        capture_output=True,
        text=True,
        check=False,
    )
    if added.returncode != 0:
        pytest.fail(f"cannot check out the baseline {commit[:12]}: {added.stderr}")
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
            check=False,
        )


@pytest.fixture(scope="module")
def baseline_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _worktree(BASELINE, tmp_path_factory.mktemp("baseline"))


@pytest.fixture(scope="module")
def redesign_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _worktree(BEFORE_REDESIGN, tmp_path_factory.mktemp("before-redesign"))


def _old_env(tree: Path, env: dict[str, str]) -> dict[str, str]:
    """Run the baseline's code: its folders come before the installed meda."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "plugins")])}


def _old_python(tree: Path, env: dict[str, str], code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env=_old_env(tree, env),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


def _vm(api: httpx.Client, name: str) -> dict[str, Any]:
    response = api.get(f"/vms/{name}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _make_old_home(api: httpx.Client, netns: str) -> dict[str, dict[str, Any]]:
    """Running and stopped VMs with forwards, a template with a clone."""
    guest_ip(start_vm(api, "web"))
    assert (
        api.post(
            "/vms/web/port-forward", json={"host_port": WEB_PORT, "guest_port": 80}
        ).status_code
        == 201
    )
    assert http_get(netns, f"http://127.0.0.1:{WEB_PORT}/") == HTTP_PAGE
    guest_ip(start_vm(api, "idle"))
    assert api.post("/vms/idle/stop").status_code == 200
    assert (
        api.post(
            "/vms/idle/port-forward", json={"host_port": IDLE_PORT, "guest_port": 80}
        ).status_code
        == 201
    )
    created = api.post("/vms", json={"name": "tpl", "memory": "256M", "template": True})
    assert created.status_code == 201, created.text
    guest_ip(api.post("/vms/tpl/start").json()["vm"])
    assert api.post("/vms/tpl/snapshot").status_code == 200
    assert api.post("/vms/tpl/stop").status_code == 200
    assert api.post("/vms/tpl/clone", json={"name": "c1"}).status_code == 201
    return {name: _vm(api, name) for name in ("web", "idle", "tpl", "c1")}


def _state_version(home: Path) -> int:
    with sqlite3.connect(home / "state.db") as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_home_from_the_baseline_upgrades_intact_and_usable(
    baseline_tree: Path, tmp_path: Path, netns: str, guest_image: dict[str, object]
) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "MEDA_HOME": str(home), "MEDA_DEFAULT_IMAGE": "guest", "MEDA_NETNS": netns}
    kernel, initrd = (str(guest_image[key]) for key in ("kernel", "initrd"))
    imported_by = _old_python(
        baseline_tree,
        env,
        (
            # The old tree's module names: its core was flat (meda_core.app).
            "import meda_core; from pathlib import Path; from meda_core.app import Meda;"
            f" Meda().images.import_files('guest', kernel=Path({kernel!r}),"
            f" initrd=Path({initrd!r}), cmdline={guest_image['cmdline']!r});"
            # As `meda images build` records what it made (its guest runs sshd).
            f" Meda().images.import_files('built', kernel=Path({kernel!r}),"
            " source='build:0123456789abcdef');"
            " print(meda_core.__file__)"
        ),
    )
    assert imported_by.startswith(str(baseline_tree))  # the old code wrote this home
    old = Server(home=home, env=_old_env(baseline_tree, env), cwd=baseline_tree)
    new = Server(home=home, env=env)
    try:
        old.start()
        with old.client() as api:
            before = _make_old_home(api, netns)
            images_before = api.get("/images").json()["images"]
        old.kill()  # the old server goes; its guests keep running
        assert _state_version(home) == 1

        new.start()
        assert _state_version(home) == migrations.latest()
        with new.client() as api:
            after = {name: _vm(api, name) for name in before}
            for name, vm in before.items():
                assert after[name]["state"] == vm["state"], name
                assert after[name]["ip"] == vm["ip"], name
                assert after[name]["details"]["pid"] == vm["details"]["pid"], name
                assert after[name]["details"]["port_forwards"] == vm["details"]["port_forwards"]
            images = api.get("/images").json()["images"]
            # Readiness is the image's now: a built image keeps the port 22 every run waited
            # on before; the others have none (their runs boot cold).
            assert {i["name"]: i.pop("ready_port") for i in images} == {"guest": None, "built": 22}
            # Answers show the cmdline now: the one each image was imported with.
            assert {i["name"]: i.pop("cmdline") for i in images} == {
                "guest": guest_image["cmdline"],
                "built": None,
            }
            assert images == images_before
            ran = api.post("/images/run", json={"image": "guest", "name": "ran"})
            assert ran.status_code == 201 and ran.json()["run"]["path"] == "cold"
            assert api.get("/templates").json()["templates"][0]["clones"] == ["c1"]
            # Running guests answer, through a forward and a clone's own namespace, as the
            # new rules render them.
            assert http_get(netns, f"http://127.0.0.1:{WEB_PORT}/") == HTTP_PAGE
            assert http_get(netns, f"http://{before['c1']['ip']}/") == HTTP_PAGE
            # The stopped VM starts on its lease; its forward was kept.
            started = api.post("/vms/idle/start")
            assert started.status_code == 200, started.text
            assert guest_ip(started.json()["vm"]) == before["idle"]["ip"]
            assert http_get(netns, f"http://127.0.0.1:{IDLE_PORT}/") == HTTP_PAGE
            # The old meda's snapshot has another device layout (its seed was a disk): it is
            # refused, saying how to go on, and a new snapshot of the template clones.
            refused = api.post("/vms/tpl/clone", json={"name": "c2"})
            assert refused.status_code == 409 and "take a new snapshot" in refused.text
            assert api.get("/vms/c2").status_code == 404  # nothing was left of it
            guest_ip(api.post("/vms/tpl/start").json()["vm"])
            assert api.post("/vms/tpl/snapshot").status_code == 200
            assert api.post("/vms/tpl/stop", params={"force": "true"}).status_code == 200
            clone = api.post("/vms/tpl/clone", json={"name": "c2"})
            assert clone.status_code == 201, clone.text
            assert http_get(netns, f"http://{clone.json()['vm']['ip']}/") == HTTP_PAGE
            for name in ("ran", "c1", "c2", "idle", "web", "tpl"):
                vm_dir = _vm(api, name)["details"]["vm_dir"]
                assert api.delete(f"/vms/{name}").status_code == 200, name
                assert processes_mentioning(vm_dir) == []
            assert api.get("/vms").json()["count"] == 0
    finally:
        old.kill()
        new.kill()
        Meda(Settings(home=home, netns=netns, stop_timeout=3)).vms.delete_all()


def _make_old_home_before_redesign(api: httpx.Client, netns: str) -> dict[str, dict[str, Any]]:
    """Smaller than the first baseline's: a running VM with a forward, a template with a
    snapshot (its frozen disk is the old ``disk.qcow2``)."""
    guest_ip(start_vm(api, "web"))
    forward = {"host_port": WEB_PORT, "guest_port": 80}
    assert api.post("/vms/web/port-forward", json=forward).status_code == 201
    created = api.post("/vms", json={"name": "tpl", "memory": "256M", "template": True})
    assert created.status_code == 201, created.text
    guest_ip(api.post("/vms/tpl/start").json()["vm"])
    assert api.post("/vms/tpl/snapshot").status_code == 200
    assert api.post("/vms/tpl/stop").status_code == 200
    return {name: _vm(api, name) for name in ("web", "tpl")}


def test_a_home_from_before_the_redesign_keeps_its_qcow2_disks(
    redesign_tree: Path, tmp_path: Path, netns: str, guest_image: dict[str, object]
) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "MEDA_HOME": str(home), "MEDA_DEFAULT_IMAGE": "guest", "MEDA_NETNS": netns}
    kernel, initrd = (str(guest_image[key]) for key in ("kernel", "initrd"))
    imported_by = _old_python(
        redesign_tree,
        env,
        (
            "import meda_core; from pathlib import Path; from meda_core.app import Meda;"
            f" Meda().images.import_files('guest', kernel=Path({kernel!r}),"
            f" initrd=Path({initrd!r}), cmdline={guest_image['cmdline']!r});"
            " print(meda_core.__file__)"
        ),
    )
    assert imported_by.startswith(str(redesign_tree))  # the old code wrote this home
    old = Server(home=home, env=_old_env(redesign_tree, env), cwd=redesign_tree)
    new = Server(home=home, env=env)
    try:
        old.start()
        with old.client() as api:
            before = _make_old_home_before_redesign(api, netns)
        old.kill()  # the old server goes; its guests keep running
        assert _state_version(home) == 2
        new.start()
        assert _state_version(home) == migrations.latest()
        # Every VM has the disk it had, under the name and in the format it had.
        store = StateStore(home / "state.db")
        for name in before:
            vm = store.get_vm(name)
            assert vm is not None and (vm.disk_file, vm.disk_format) == ("disk.qcow2", "qcow2")
            assert vm.disk_path.is_file() and vm.disk_path.parent == vm.vm_dir
        with new.client() as api:
            after = {name: _vm(api, name) for name in before}
            assert [after[n]["state"] for n in before] == [before[n]["state"] for n in before]
            assert after["web"]["details"]["pid"] == before["web"]["details"]["pid"]
            assert http_get(netns, f"http://127.0.0.1:{WEB_PORT}/") == HTTP_PAGE
            # The old snapshot has other devices (no agent channel): refused, saying how to
            # go on; a new snapshot of the template clones, over the template's disk.
            refused = api.post("/vms/tpl/clone", json={"name": "c1"})
            assert refused.status_code == 409 and "take a new snapshot" in refused.text
            guest_ip(api.post("/vms/tpl/start").json()["vm"])
            assert api.post("/vms/tpl/snapshot").status_code == 200
            assert api.post("/vms/tpl/stop", params={"force": "true"}).status_code == 200
            clone = api.post("/vms/tpl/clone", json={"name": "c1"})
            assert clone.status_code == 201, clone.text
            assert http_get(netns, f"http://{clone.json()['vm']['ip']}/") == HTTP_PAGE
            # The running VM's disk, stopped, becomes an image (flattened from its path).
            assert api.post("/vms/web/stop", params={"force": "true"}).status_code == 200
            made = api.post("/images", json={"name": "from-web", "from_vm": "web"})
            assert made.status_code == 201, made.text
            for name in ("c1", "web", "tpl"):
                vm_dir = _vm(api, name)["details"]["vm_dir"]
                assert api.delete(f"/vms/{name}").status_code == 200, name
                assert processes_mentioning(vm_dir) == []
    finally:
        old.kill()
        new.kill()
        Meda(Settings(home=home, netns=netns, stop_timeout=3)).vms.delete_all()
