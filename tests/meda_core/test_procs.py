"""Python children meda starts import nothing from the directory root runs them in."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meda_cli import templates
from meda_core.host import namespaces as netns
from meda_core.host import processes as procs
from meda_core.vms import readiness
from meda_core.vms.templates import TemplateJob

PLANTED = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory another user could write, holding a ``socket.py`` and a
    ``meda_cli`` package that leave a marker if imported; the marker's path."""
    trap = tmp_path / "shared"
    marker = tmp_path / "marker"
    (trap / "meda_cli").mkdir(parents=True)
    for module in (trap / "socket.py", trap / "meda_cli" / "__init__.py"):
        module.write_text(PLANTED.format(marker=str(marker)))
    monkeypatch.chdir(trap)
    return marker


def test_probes_ignore_the_working_directory(planted: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert readiness.answers(None, "127.0.0.1", port)
        assert netns.port_problem(None, port, "tcp", "127.0.0.1")
    assert not planted.exists()


def test_the_template_builder_starts_from_root_and_ignores_the_working_directory(
    planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[dict[str, Any]] = []

    def popen(argv: list[str], **options: Any) -> None:
        started.append({"argv": argv, **options})

    job = TemplateJob(
        name="tpl-0123456789abcdef",
        image="default:latest",
        fingerprint="f",
        memory="256M",
        cpus=1,
        disk="1G",
        user_data=None,
        ready_port=22,
    )
    with monkeypatch.context() as patched:
        patched.setattr(subprocess, "Popen", popen)
        templates.spawn_build(tmp_path / "home", job)
    [child] = started
    assert child["argv"][:2] == procs.python() and child["cwd"] == "/"
    assert child["env"]["MEDA_HOME"] == str(tmp_path / "home")
    # What that argv runs, run here for real, from the planted directory:
    subprocess.run([*procs.python("-c", "import socket, meda_cli")], check=True, timeout=30)
    assert not planted.exists()
    subprocess.run([sys.executable, "-c", "import socket"], check=True, timeout=30)
    assert planted.exists()  # the trap works: without -P it is sprung
