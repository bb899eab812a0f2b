"""Is a guest ready? Its service port answers on its address, seen from meda's namespace."""

from __future__ import annotations

import subprocess
import sys
import time

from meda_core import netns
from meda_core.errors import BackendError

_PROBE = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
    "s.settimeout(5)\n"
    # An SSH server speaks first; anything else counts once it accepts the connection.
    "sys.exit(0 if sys.argv[2] != '22' or s.recv(4) == b'SSH-' else 1)\n"
)


def answers(ns: str | None, ip: str, port: int) -> bool:
    argv = [*netns.exec_prefix(ns), sys.executable, "-c", _PROBE, ip, str(port)]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def wait_until_ready(ns: str | None, ip: str, port: int, timeout: float) -> float:
    """Seconds until ``ip:port`` answers (SSH: its banner); BackendError after ``timeout``."""
    started = time.monotonic()
    while not answers(ns, ip, port):
        if time.monotonic() - started > timeout:
            raise BackendError(f"the guest at {ip} did not answer on port {port} in {timeout:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - started
