"""Boundaries the design promises: a core without web or CLI, no plugin imported by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_MODULES = ("meda_qemu", "meda_qcow2")


def test_core_imports_no_web_or_cli_framework() -> None:
    # click is not listed: httpx (the remote client's HTTP library) loads it for its own CLI.
    code = (
        "import sys, pkgutil, importlib, meda_core\n"
        "for m in pkgutil.walk_packages(meda_core.__path__, 'meda_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in {'fastapi', 'typer', "
        "'starlette', 'uvicorn'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_api_and_cli_never_import_a_plugin_by_name() -> None:
    for package in ("meda_api", "meda_cli", "meda_core"):
        for source in (ROOT / package).rglob("*.py"):
            text = source.read_text()
            for plugin in PLUGIN_MODULES:
                assert plugin not in text, f"{source} names {plugin}"
