"""Builds the guest program from its one C file into the cache, once per version of it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from meda_core.plugin import BackendUnavailable

SOURCE = Path(__file__).parent / "guest" / "meda_agent.c"
FLAGS = ("-static", "-Os", "-Wall", "-Wextra", "-Werror")
HOW = "install a C compiler and the static C library: apt-get install gcc libc6-dev"


def agent_binary(cache_dir: Path) -> Path:
    """``cache_dir/meda-agent-<hash of the source>``, compiled unless it is there."""
    source = SOURCE.read_bytes()
    target = cache_dir / f"meda-agent-{hashlib.sha256(source).hexdigest()[:12]}"
    if target.is_file():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise BackendUnavailable(f"the meda agent cannot be built: no C compiler; {HOW}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".meda-agent-", dir=cache_dir)
    os.close(fd)
    try:
        run = subprocess.run(
            [compiler, *FLAGS, "-o", temp, str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if run.returncode != 0:
            raise BackendUnavailable(
                f"the meda agent cannot be built ({run.stderr.strip()[-400:]}); {HOW}"
            )
        os.chmod(temp, 0o755)
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)
    return target
