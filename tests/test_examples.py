"""The examples work: the embedding program runs, the third-party plugin installs with
pip into its own venv, shows in ``meda plugins``, passes its conformance suite and boots a
VM whose raw disk QEMU opens as raw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from meda_core.facade import Meda
from meda_core.images import diskprobe
from meda_core.settings import Settings
from meda_core.testing.guest import HTTP_PAGE, BootableGuest
from meda_core.testing.host import free_port, processes_mentioning
from meda_core.testing.pytest_plugin import wait_for_text
from meda_qemu import qmp
from tests.integration.conftest import Server
from tests.integration.test_network import guest_ip, http_get, start_vm

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.mark.vm
def test_the_embedding_example_runs_a_vm(tmp_path: Path, guest_image: dict[str, object]) -> None:
    home = tmp_path / "home"
    Meda(Settings(home=home)).images.import_files("guest", **guest_image)  # type: ignore[arg-type]
    env = {
        **os.environ,
        "MEDA_HOME": str(home),
        "MEDA_DEFAULT_IMAGE": "guest",
        "MEDA_NETWORK": "user",
    }  # user-mode: nothing on the host's network
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded is running" in result.stdout and "embedded is stopped" in result.stdout
    assert result.stdout.strip().endswith("deleted")


@dataclass(frozen=True)
class Venv:
    python: Path
    site: Path


@pytest.fixture(scope="module")
def raw_storage_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A venv of its own with the raw-storage example installed into it by pip."""
    return _example_venv(tmp_path_factory.mktemp("raw-storage") / "venv", "raw-storage")


def test_the_example_plugin_installs_lists_and_conforms(
    raw_storage_venv: Venv, tmp_path: Path
) -> None:
    python = raw_storage_venv.python
    env = {**os.environ, "MEDA_HOME": str(tmp_path / "home")}
    listed = subprocess.run(
        [python, "-m", "meda_cli.main", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(listed.stdout)
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["raw"]["distribution"] == "meda-raw-storage"
    assert plugins["raw"]["backends"] == ["storage:raw"] and plugins["raw"]["error"] is None
    # Installing a backend does not make it the default: qcow2 stays chosen until asked.
    selected = [b["name"] for b in report["backends"] if b["role"] == "storage" and b["selected"]]
    assert selected == ["qcow2"]
    conformance = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "raw-storage")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert conformance.returncode == 0, conformance.stdout[-3000:]


def _example_venv(where: Path, example: str) -> Venv:
    """A venv of its own with ``examples/<example>`` installed.

    The venv sees this environment's packages (meda itself), as a plugin author's would.
    """
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host = sysconfig.get_paths()["purelib"]  # addsitedir: its own .pth files count too
    Path(site, "meda-host.pth").write_text(f"import site; site.addsitedir({host!r})\n")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(EXAMPLES / example)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    return Venv(python, Path(site))


@pytest.fixture(scope="module")
def oci_layout_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv with the oci-layout example installed (made once per module)."""
    return _example_venv(tmp_path_factory.mktemp("oci-layout") / "venv", "oci-layout").python


def test_the_registry_example_installs_lists_and_conforms(
    oci_layout_python: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "MEDA_HOME": str(tmp_path / "home")}
    listed = subprocess.run(
        [oci_layout_python, "-m", "meda_cli.main", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert plugins["oci-layout"]["distribution"] == "meda-oci-layout"
    assert plugins["oci-layout"]["backends"] == ["registry:oci-layout"]
    assert plugins["oci-layout"]["error"] is None
    suite = subprocess.run(
        [
            oci_layout_python,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            str(EXAMPLES / "oci-layout"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert suite.returncode == 0, suite.stdout[-3000:]
    assert "TestLayoutRegistry::test_push_then_pull_gives_the_same_files_and_digest PASSED" in (
        suite.stdout
    )


@pytest.mark.vm
def test_an_image_pushed_to_an_oci_layout_comes_back_and_boots(
    oci_layout_python: Path, tmp_path: Path, test_guest: BootableGuest
) -> None:
    root = tmp_path / "layouts"
    env = {
        **os.environ,
        "MEDA_HOME": str(tmp_path / "home"),
        "MEDA_REGISTRY": "oci-layout",
        "MEDA_OCI_LAYOUT_ROOT": str(root),
        "MEDA_NETWORK": "user",  # user-mode: nothing on the host's network
    }

    def meda(*args: str) -> Any:
        done = subprocess.run(
            [oci_layout_python, "-m", "meda_cli.main", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"meda {' '.join(args)}: {done.stdout}{done.stderr}"
        return json.loads(done.stdout)

    guest = test_guest
    meda(
        "images",
        "import",
        "guest",
        "--kernel",
        str(guest.kernel),
        "--initrd",
        str(guest.initrd),
        "--cmdline",
        guest.cmdline,
    )
    pushed = meda("push", "guest", "guest:v1")
    assert (root / "cirunlabs" / "guest" / "index.json").is_file()
    meda("rmi", "guest")
    assert meda("images", "list")["images"] == []
    pulled = meda("pull", "guest:v1")
    assert pulled["digest"] == pushed["digest"]
    try:
        run = meda("run", "guest:v1", "--name", "from-layout", "--memory", "256M", "--cold")
        wait_for_text(Path(run["vm"]["details"]["console_log"]), guest.marker, 60)
    finally:
        subprocess.run(
            [oci_layout_python, "-m", "meda_cli.main", "delete", "from-layout", "--force"],
            env=env,
            capture_output=True,
            check=False,
        )


def _disk_as_qemu_opened_it(vm_dir: Path) -> tuple[str, str]:
    """The driver QEMU opened the VM's disk with (QMP ``query-block``) and the format its
    command line gave."""
    [disk] = [b for b in qmp.execute(vm_dir / "qmp.sock", "query-block") if b["device"] == "disk0"]
    pid = int((vm_dir / "qemu.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    [drive] = [a for a in argv if "id=disk0" in a]
    return disk["inserted"]["drv"], drive


def _details(api: httpx.Client, name: str) -> dict[str, Any]:
    response = api.get(f"/vms/{name}")
    assert response.status_code == 200, response.text
    return response.json()["details"]  # type: ignore[no-any-return]


@pytest.mark.vm
def test_the_raw_storage_example_boots_serves_snapshots_and_clones(
    raw_storage_venv: Venv, tmp_path: Path, netns: str, guest_image: dict[str, object]
) -> None:
    home, port = tmp_path / "home", free_port()
    Meda(Settings(home=home)).images.import_files("guest", **guest_image)  # type: ignore[arg-type]
    env = {
        **os.environ,
        "MEDA_HOME": str(home),
        "MEDA_DEFAULT_IMAGE": "guest",
        "MEDA_NETNS": netns,
        "MEDA_STORAGE": "raw",
        # The example as pip installed it into its venv: meda finds it by its entry point.
        "PYTHONPATH": str(raw_storage_venv.site),
    }
    server = Server(home=home, env=env)
    try:
        server.start()
        with server.client() as api:
            vm = start_vm(api, "web")
            guest_ip(vm)
            vm_dir = Path(vm["details"]["vm_dir"])
            assert vm["details"]["storage"] == "raw"
            assert diskprobe.detect(vm_dir / "disk.raw") == "raw"
            driver, drive = _disk_as_qemu_opened_it(vm_dir)
            assert driver == "raw" and ",format=raw," in drive
            forward = {"host_port": port, "guest_port": 80}
            assert api.post("/vms/web/port-forward", json=forward).status_code == 201
            assert http_get(netns, f"http://127.0.0.1:{port}/") == HTTP_PAGE
            # A raw disk rests on nothing: a snapshot freezes a copy and a clone copies it.
            created = api.post("/vms", json={"name": "tpl", "memory": "256M", "template": True})
            assert created.status_code == 201, created.text
            guest_ip(api.post("/vms/tpl/start").json()["vm"])
            assert api.post("/vms/tpl/snapshot").status_code == 200, "snapshot"
            assert api.post("/vms/tpl/stop").status_code == 200
            clone = api.post("/vms/tpl/clone", json={"name": "c1"})
            assert clone.status_code == 201, clone.text
            assert http_get(netns, f"http://{clone.json()['vm']['ip']}/") == HTTP_PAGE
            for name in ("c1", "tpl", "web"):
                vm_dir = Path(_details(api, name)["vm_dir"])
                assert api.delete(f"/vms/{name}").status_code == 200, name
                assert not vm_dir.exists() and processes_mentioning(str(vm_dir)) == []
    finally:
        server.kill()
        Meda(Settings(home=home, netns=netns, stop_timeout=3)).vms.delete_all()
