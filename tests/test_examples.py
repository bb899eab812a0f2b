"""The examples work: the embedding program runs, the third-party plugin installs with
pip into its own venv, shows in ``meda plugins`` and passes its conformance suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from meda_core.facade import Meda
from meda_core.settings import Settings

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
