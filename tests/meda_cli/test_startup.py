"""What a ``meda`` process imports before it answers: help and version load no plugin,
model or HTTP client, and a command sent to a server loads no plugin system.

Structural, not timed: each case runs the CLI in a fresh interpreter and reads its
``sys.modules`` once the command is done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from meda_core.facade import Meda
from meda_core.models import CreateVMRequest
from tests.conftest import ServeApi

#: Runs ``meda ARGS...`` as the console script does, then writes what it imported.
PROBE = """
import json, sys
out, sys.argv = sys.argv[1], ["meda", *sys.argv[2:]]
from meda_cli.main import run
try:
    run()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def plugin_modules() -> set[str]:
    """The top-level modules of every installed meda plugin (the entry-point group)."""
    found = {ep.module.split(".")[0] for ep in metadata.entry_points(group="meda")}
    assert found, "no meda plugin is installed: the checks below would prove nothing"
    return found


#: Nothing a help or version needs: these are what made ``meda --help`` slow.
NOT_FOR_HELP = {
    "httpx",
    "pydantic",
    "pydantic_settings",
    "pluggy",
    "meda_core.facade",
    "meda_core.models",
    "meda_core.settings",
    "meda_core.backends.manager",
    "meda_api",
    "fastapi",
    "uvicorn",
}
#: What only a command working on this host needs (the plugin system and the facade).
NOT_FOR_A_SERVER = {"pluggy", "meda_core.facade", "meda_core.backends.manager", "meda_api"}


def imported(home: Path, *args: str, code: int = 0) -> set[str]:
    """The modules ``meda ARGS...`` imported, in a fresh process; it must exit ``code``."""
    out = home.parent / "modules.json"
    environment = {**os.environ, "MEDA_HOME": str(home), "MEDA_NETWORK": "user"}
    for name in ("MEDA_URL", "MEDA_API_TOKEN", "MEDA_API_TOKEN_FILE"):
        environment.pop(name, None)
    argv = [sys.executable, "-c", PROBE, str(out), *args]
    done = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["code"] or 0) == code, done.stderr
    return set(result["modules"])


HELP_CASES = [
    ("--help",),
    ("--version",),
    ("list", "--help"),
    ("port-forward", "--help"),  # its --protocol choice is an enum
    ("images", "import", "--help"),
    ("pull", "--help"),
    ("serve", "--help"),
    ("logs", "--help"),
]


@pytest.mark.parametrize("args", HELP_CASES, ids=lambda a: " ".join(a) or "no-args")
def test_help_and_version_import_only_the_cli(tmp_path: Path, args: tuple[str, ...]) -> None:
    modules = imported(tmp_path / "home", *args)
    assert "typer" in modules
    assert not modules & (NOT_FOR_HELP | plugin_modules())


def test_no_command_is_the_help_and_imports_as_little(tmp_path: Path) -> None:
    modules = imported(tmp_path / "home", code=2)  # click's usage error code, as before
    assert not modules & (NOT_FOR_HELP | plugin_modules())


def test_a_command_sent_to_a_server_loads_no_plugin(
    tmp_path: Path, fake_meda: Meda, fake_image: str, serve_api: ServeApi
) -> None:
    url = serve_api(fake_meda)
    fake_meda.vms.create(CreateVMRequest(name="vm1"))
    for args in (("list", "--json"), ("images", "--json"), ("logs", "vm1")):
        modules = imported(tmp_path / "home", "--url", url, *args)
        assert "httpx" in modules, args  # it did ask the server
        assert not modules & (NOT_FOR_A_SERVER | plugin_modules()), args


def test_a_command_on_this_host_does_load_the_plugins(tmp_path: Path) -> None:
    """The probe sees plugins when they are loaded: the checks above can fail."""
    modules = imported(tmp_path / "home", "list", "--json")
    assert {"pluggy", "meda_core.facade"} <= modules
    assert modules & plugin_modules()
