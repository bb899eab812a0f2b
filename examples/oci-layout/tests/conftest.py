"""Fixtures: a backend whose layout root is a fresh folder, and references into it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from meda_oci_layout import LayoutRegistry

from meda_core.plugin import BackendContext, Reference


@pytest.fixture
def layout_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "layouts"
    monkeypatch.setenv("MEDA_OCI_LAYOUT_ROOT", str(root))
    return root


@pytest.fixture
def backend(backend_context: BackendContext, layout_root: Path) -> LayoutRegistry:
    return LayoutRegistry(backend_context)


@pytest.fixture
def reference() -> Callable[[str], Reference]:
    return lambda tag: Reference("layout.invalid", "tests/guest", tag)
