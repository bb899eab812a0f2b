"""Process identity that survives PID reuse: a PID plus its start time and host boot."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from meda_core.models import RuntimeInfo


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (the state) on, or None if ``pid`` does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    return stat[stat.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def parent_pid(pid: int) -> int | None:
    """The PID of ``pid``'s parent, or None if it does not exist."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def identify(pid: int) -> RuntimeInfo | None:
    """A :class:`RuntimeInfo` naming ``pid`` exactly, or None if it is gone."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    return RuntimeInfo(pid=pid, start_ticks=ticks, boot_id=boot_id())


def is_alive(runtime: RuntimeInfo) -> bool:
    """True only if the very process ``runtime`` names still runs (not a PID reused)."""
    return runtime.boot_id == boot_id() and start_ticks(runtime.pid) == runtime.start_ticks


def wait_gone(runtime: RuntimeInfo, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process to end; True if it did."""
    deadline = time.monotonic() + timeout
    while is_alive(runtime):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def kill(runtime: RuntimeInfo, timeout: float = 5.0) -> None:
    """SIGKILL the process if it is still the one ``runtime`` names, and wait for it."""
    if not is_alive(runtime):
        return
    try:
        os.kill(runtime.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_gone(runtime, timeout)


def python(*args: str) -> list[str]:
    """argv of a Python child that imports nothing from its working directory (``-P``):
    run as root from a directory another user may write, it must not pick up their
    ``socket.py`` or ``meda_cli/``. (``-I`` would also drop PYTHONPATH, which the
    operator's environment may need for plugins.)"""
    return [sys.executable, "-P", *args]
