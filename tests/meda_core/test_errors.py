"""The error hierarchy as its docstring tree and the README's table say it is."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from meda_core import errors
from meda_core.errors import MedaError

README = Path(__file__).resolve().parents[2] / "README.md"
CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, MedaError) and cls.__module__ == errors.__name__
]


def _tree() -> dict[str, tuple[str, int]]:
    """Each class of the docstring tree: (its parent, its depth)."""
    found: dict[str, tuple[str, int]] = {}
    parents: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^\s*([│ ]*)(?:[├└]── )?([A-Z]\w+)\s", line + " ")
        if match is None or not line.strip() or match[2] not in {c.__name__ for c in CLASSES}:
            continue
        depth = 0 if match[2] == "MedaError" else len(match[1]) // 4 + 1
        parents[depth:] = [match[2]]
        found[match[2]] = (parents[depth - 1] if depth else "", depth)
    return found


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_docstring_tree_has_each_class_under_its_parent(cls: type[MedaError]) -> None:
    tree = _tree()
    assert cls.__name__ in tree, f"{cls.__name__} is not in meda_core/errors.py's tree"
    if cls is not MedaError:
        assert tree[cls.__name__][0] == cls.__mro__[1].__name__


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_readme_table_has_each_class(cls: type[MedaError]) -> None:
    rows = [line for line in README.read_text().splitlines() if f"`{cls.__name__}`" in line]
    assert rows, f"{cls.__name__} is not in the README's error table"
    assert any(f"`{cls.code}`" in row and str(cls.exit_code) in row for row in rows)
