"""A local user without privileges (``nobody``), for tests: what it can read of meda's files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"

# Run as nobody: report each path it could list (a directory) or read (anything else).
_PROBE = """
import json, os, sys
got = []
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        got.append(path)
    except OSError:
        pass
print(json.dumps(got))
"""


def run_as_nobody(code: str, *args: str, timeout: float = 60) -> str:
    """What Python ``code`` (given ``args``) prints when user ``nobody`` runs it (needs
    root to ask)."""
    # The system's Python: nobody may not enter the home a venv or pyenv lives in.
    python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else os.path.realpath(sys.executable)
    result = subprocess.run(
        [python, "-I", "-S", "-c", code, *args],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return result.stdout


def readable_by_nobody(paths: Iterable[Path]) -> list[Path]:
    """Those of ``paths`` that user ``nobody`` can read or list (needs root to ask)."""
    return [Path(p) for p in json.loads(run_as_nobody(_PROBE, *map(str, paths)))]


def open_to_others(root: Path) -> list[Path]:
    """``root`` and what lies below it that grants group or others any permission."""
    found = []
    for path in (root, *root.rglob("*")):
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(path)
    return found


@contextmanager
def reachable_dir() -> Iterator[Path]:
    """A fresh directory every user may enter (pytest's tmp_path is not): only meda's own
    modes then stand between a local user and what meda makes in it."""
    path = Path(tempfile.mkdtemp(prefix="meda-reachable-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
