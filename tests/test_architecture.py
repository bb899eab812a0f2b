"""Boundaries the design promises: a core without web or CLI, no plugin imported by name."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The shipped plugins, as meda finds them: entry point name -> module.
ENTRY_POINTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
    "entry-points"
]["meda"]
PLUGIN_MODULES = tuple(ENTRY_POINTS.values())
#: The code that must not know a shipped plugin (meda_core.testing's fakes may name
#: themselves and its suites may load plugins).
CORE_PACKAGES = ("meda_core", "meda_api", "meda_cli")
#: Literals that equal a backend's name or a plugin's constant, allowed where they mean
#: something else. Keep it tiny: each entry says why.
ALLOWED_IN: dict[tuple[str, str], str] = {
    ("meda_core/images/diskprobe.py", "qcow2"): "a disk format, the core's own vocabulary",
    ("meda_core/state/migrations.py", "qcow2"): "the one disk format meda made before v3",
    ("meda_core/backends/roles.py", "user"): "NicKind.USER, a hypervisor's user-mode NIC",
}
#: Values of plugin constants that are ordinary words wherever they appear.
ORDINARY = {
    "meda": "the project's name (tap-bridge's nftables table and the agent backend have it)",
    "0.0.0.0": "every IPv4 address",
    "eth0": "the guest NIC name meda's seed sets",
    "console=ttyS0": "the serial console meda logs every Linux guest on",
}
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


def core_imports(source: Path) -> set[str]:
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
        for name in core_imports(source)
        if not any(name == s or name.startswith(s + ".") for s in PLUGIN_SURFACE)
    }
    assert not strays, "plugins import from outside meda_core.plugin:\n" + "\n".join(sorted(strays))


def _plugin_sources_shipped() -> Iterator[Path]:
    for module in PLUGIN_MODULES:
        yield from (p for p in (ROOT / "plugins" / module).rglob("*.py") if "tests" not in p.parts)


def _backend_names() -> set[str]:
    """Entry point names and the ``name`` every shipped backend class gives itself."""
    names = set(ENTRY_POINTS)
    for source in _plugin_sources_shipped():
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef):
                names.update(_class_constant(node, "name"))
    return names


def _class_constant(node: ast.ClassDef, attribute: str) -> set[str]:
    return {
        stmt.value.value
        for stmt in node.body
        if isinstance(stmt, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == attribute for target in stmt.targets)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    }


def _plugin_constants() -> dict[str, str]:
    """Value -> ``module.NAME`` of every module-level string constant of a shipped plugin."""
    found: dict[str, str] = {}
    for source in _plugin_sources_shipped():
        for stmt in ast.parse(source.read_text()).body:
            target, value = _assignment(stmt)
            if target and target.isupper() and isinstance(value, str) and value not in ORDINARY:
                found[value] = f"{source.relative_to(ROOT)}:{target}"
    return found


def _assignment(stmt: ast.stmt) -> tuple[str | None, object]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, value = stmt.target, stmt.value
    else:
        return None, None
    if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
        return target.id, value.value
    return None, None


def plugin_knowledge(
    source: str, where: str, names: set[str], constants: dict[str, str]
) -> list[str]:
    """What ``source`` knows of the shipped plugins: imports of their modules, and string
    literals (docstrings aside) that are a backend's name or a plugin constant's value."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
            for module in modules:
                if module and module.split(".")[0] in PLUGIN_MODULES:
                    found.append(f"{where}:{node.lineno} imports {module}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings or (where, node.value) in ALLOWED_IN:
                continue
            if node.value in names:
                found.append(f"{where}:{node.lineno} names the backend {node.value!r}")
            elif node.value in constants:
                found.append(f"{where}:{node.lineno} copies {constants[node.value]}")
    return found


def test_the_core_never_names_a_shipped_plugin() -> None:
    """No backend name used as one (``vm.network == "user"``), no plugin module or its
    constants (``"tap0"``, tap-bridge's NIC in a VM's namespace) in the core, API or CLI:
    what a backend knows, the core asks it through its role."""
    names, constants = _backend_names() - ORDINARY.keys(), _plugin_constants()
    found = [
        problem
        for package in CORE_PACKAGES
        for source in sorted((ROOT / package).rglob("*.py"))
        if "testing" not in source.relative_to(ROOT).parts
        for problem in plugin_knowledge(
            source.read_text(), str(source.relative_to(ROOT)), names, constants
        )
    ]
    assert not found, "the core knows shipped plugins:\n" + "\n".join(found)


def test_the_scan_finds_what_it_looks_for() -> None:
    """The scan above is no test that cannot fail: the branches this redesign removed,
    written back, are found (and the allowed words are not)."""
    code = (
        '"""A module naming tap-bridge only in its docstring: "user"."""\n'
        "from meda_tapbridge.isolated import TAP\n"
        "import meda_usernet.backend\n"
        "def f(vm):\n"
        '    if vm.network == "tap-bridge":\n'
        '        return "tap0"\n'
        '    return vm.network == "user" or vm.storage == "qcow2"\n'
        'FORMATS = ("raw", "qcow2")\n'
    )
    names, constants = _backend_names(), _plugin_constants()
    found = plugin_knowledge(code, "meda_core/vms/seed.py", names, constants)
    assert sorted(line.removeprefix("meda_core/vms/seed.py:") for line in found) == [
        "2 imports meda_tapbridge.isolated",
        "3 imports meda_usernet.backend",
        "5 names the backend 'tap-bridge'",
        "6 copies plugins/meda_tapbridge/isolated.py:TAP",
        "7 names the backend 'qcow2'",
        "7 names the backend 'user'",
        "8 names the backend 'qcow2'",
    ]
    assert plugin_knowledge(code, "meda_core/images/diskprobe.py", names, constants)[-1:] == [
        "meda_core/images/diskprobe.py:7 names the backend 'user'"
    ]


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


def test_every_package_folder_is_packaged() -> None:
    """A folder of the core, API or CLI that pyproject does not list is missing from an
    install (and an entry for a folder that is gone breaks it)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for package in ("meda_core", "meda_api", "meda_cli")
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert found == {name for name in listed if name.split(".")[0] in CORE_PACKAGES}
