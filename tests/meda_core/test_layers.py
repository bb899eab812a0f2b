"""The core's parts import in one direction only, as docs/architecture.md draws them."""

from __future__ import annotations

from pathlib import Path

from tests.test_architecture import core_imports

CORE = Path(__file__).resolve().parents[2] / "meda_core"

#: From the bottom up: a part may import the parts before it, never one after it.
LAYERS = (
    "errors",
    "settings",
    "inputs",
    "models",
    "host",
    "state",
    "backends",
    "images",
    "vms",
    "network",
    "facade",
    "interface",
    "plugin",
    "testing",
)


def _part(module: str) -> str | None:
    """The part of the core ``module`` (a dotted name) lives in; None for the package."""
    names = module.split(".")
    return names[1] if len(names) > 1 and names[0] == "meda_core" else None


def _upward_imports() -> list[str]:
    rank = {part: i for i, part in enumerate(LAYERS)}
    wrong = []
    for source in CORE.rglob("*.py"):
        here = _part(".".join(("meda_core", *source.relative_to(CORE).with_suffix("").parts)))
        if here is None or here == "__init__":
            continue
        for module in core_imports(source):
            there = _part(module)
            if there is not None and there != here and rank[there] > rank[here]:
                wrong.append(f"{source.relative_to(CORE.parent)} ({here}) imports {module}")
    return sorted(wrong)


def test_every_part_of_the_core_is_in_a_layer() -> None:
    parts = {p.stem for p in CORE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts - {"__init__"} == set(LAYERS)


def test_the_core_imports_downwards_only() -> None:
    assert _upward_imports() == []
