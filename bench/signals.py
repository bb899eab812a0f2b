"""A benchmark stopped with SIGTERM unwinds like one stopped with Ctrl-C."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def unwind_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the servers, registries and namespaces a benchmark
    made are removed by its ``finally`` blocks instead of being left behind."""
    signal.signal(signal.SIGTERM, _exit)
