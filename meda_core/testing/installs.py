"""Make a directory look like an installed distribution with ``meda`` entry points.

Put the directory on ``sys.path`` or ``PYTHONPATH`` and meda finds the plugins, as it would
after ``pip install``: how tests load a plugin into a ``meda serve`` subprocess.
"""

from __future__ import annotations

from pathlib import Path


def install_entry_points(root: Path, dist: str, plugins: dict[str, str]) -> Path:
    """Write ``<dist>-0.1.dist-info`` under ``root`` naming ``plugins`` (name → module)."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {module}\n" for name, module in plugins.items())
    (info / "entry_points.txt").write_text(f"[meda]\n{lines}")
    return root
