"""Boundaries the design promises: a core without web or CLI, no plugin imported by name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_MODULES = (
    "meda_qemu",
    "meda_qcow2",
    "meda_usernet",
    "meda_tapbridge",
    "meda_oci",
    "meda_cloudhv",
)
#: What a plugin may import from the core: the plugin surface, and the testing kit.
PLUGIN_SURFACE = {"meda_core.plugin", "meda_core.testing"}


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


def _core_imports(source: Path) -> set[str]:
    """The ``meda_core`` modules ``source`` imports, as written."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "meda_core"}


def _plugin_sources() -> list[Path]:
    shipped = list((ROOT / "plugins").rglob("*.py"))
    examples = [p for p in (ROOT / "examples").rglob("*.py") if p.name != "embed.py"]
    return [p for p in shipped + examples if "tests" not in p.relative_to(ROOT).parts]


def test_plugins_import_only_the_plugin_surface() -> None:
    strays = {
        f"{source.relative_to(ROOT)}: {name}"
        for source in _plugin_sources()
        for name in _core_imports(source)
        if not any(name == s or name.startswith(s + ".") for s in PLUGIN_SURFACE)
    }
    assert not strays, "plugins import from outside meda_core.plugin:\n" + "\n".join(sorted(strays))


#: The state store's methods that write a VM record.
VM_RECORD_WRITES = {"insert_vm", "save_vm", "transition", "delete_vm"}
#: The one module that calls them (the store itself defines them).
VM_RECORD_WRITER = ROOT / "meda_core" / "vms" / "service.py"


def _record_writes(source: Path) -> list[str]:
    tree = ast.parse(source.read_text())
    return [
        f"{source.relative_to(ROOT)}:{node.lineno}: {node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in VM_RECORD_WRITES
    ]


def test_only_the_vm_service_writes_vm_records() -> None:
    sources = [*(ROOT / "meda_core").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    store = ROOT / "meda_core" / "state" / "store.py"
    writes = [
        write
        for source in sources
        if source not in (VM_RECORD_WRITER, store)
        for write in _record_writes(source)
    ]
    assert not writes, "VM records written outside VMService:\n" + "\n".join(writes)
    assert _record_writes(VM_RECORD_WRITER)  # the check sees the writes it looks for
