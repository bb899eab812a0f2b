"""The examples work: the embedding program runs, the third-party plugin installs with
pip into its own venv, shows in ``meda plugins`` and passes its conformance suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_core.testing.guest import BootableGuest
from meda_core.testing.pytest_plugin import wait_for_text

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


def test_the_example_plugin_installs_lists_and_conforms(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The new venv sees this environment's packages (meda itself), as a plugin author's would.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host = sysconfig.get_paths()["purelib"]  # addsitedir: its own .pth files count too
    Path(site, "meda-host.pth").write_text(f"import site; site.addsitedir({host!r})\n")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(EXAMPLES / "raw-storage")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "MEDA_HOME": str(tmp_path / "home")}
    listed = subprocess.run(
        [python, "-m", "meda_cli.main", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert plugins["raw"]["distribution"] == "meda-raw-storage"
    assert plugins["raw"]["backends"] == ["storage:raw"] and plugins["raw"]["error"] is None
    conformance = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "raw-storage")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert conformance.returncode == 0, conformance.stdout[-3000:]


def _example_venv(where: Path, example: str) -> Path:
    """A venv of its own with ``examples/<example>`` installed; its python.

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
    return python


@pytest.fixture(scope="module")
def oci_layout_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv with the oci-layout example installed (made once per module)."""
    return _example_venv(tmp_path_factory.mktemp("oci-layout") / "venv", "oci-layout")


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
