"""Running things inside meda's network namespace (``MEDA_NETNS``), or where meda is."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from meda_core.errors import BackendError, BackendUnavailable, InvalidRequest
from meda_core.host import processes as procs

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PORT_PROBE = (
    "import socket, sys\n"
    "kind = socket.SOCK_STREAM if sys.argv[2] == 'tcp' else socket.SOCK_DGRAM\n"
    "s = socket.socket(socket.AF_INET, kind)\n"
    "try:\n"
    "    s.bind((sys.argv[3], int(sys.argv[1])))\n"
    "except OSError as e:\n"
    "    print(e.strerror); sys.exit(1)\n"
)
_CONNECT_PROBE = (
    "import socket, sys\n"
    "greeting = sys.argv[4].encode()\n"
    "try:\n"
    "    with socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])) as s:\n"
    "        s.settimeout(5)\n"
    "        if greeting and s.recv(len(greeting)) != greeting:\n"
    "            print('it answered, but not with ' + sys.argv[4]); sys.exit(1)\n"
    "except OSError as e:\n"
    "    print(e.strerror or 'timed out'); sys.exit(1)\n"
)


def namespace_path(netns: str) -> Path:
    if not _NAME.fullmatch(netns) or netns in {".", ".."}:
        raise InvalidRequest(f"invalid network namespace name '{netns}'", netns=netns)
    return Path("/run/netns") / netns


def exec_prefix(netns: str | None) -> list[str]:
    """argv prefix that runs a command in ``netns`` (nothing for the current namespace)."""
    if netns is None:
        return []
    path = namespace_path(netns)
    if not path.exists():
        raise BackendUnavailable(f"network namespace '{netns}' does not exist (MEDA_NETNS)")
    return ["nsenter", f"--net={path}", "--"]


def run(netns: str | None, argv: list[str], stdin: str | None = None) -> str:
    """Run ``argv`` in ``netns``; its stdout, or :class:`BackendError` with its stderr."""
    full = [*exec_prefix(netns), *argv]
    try:
        result = subprocess.run(
            full, input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError as exc:
        raise BackendError(f"{exc.filename} not found") from None
    if result.returncode != 0:
        raise BackendError(f"{argv[0]} failed: {result.stderr.strip()}", argv=full)
    return result.stdout


def set_sysctl(netns: str | None, key: str, value: str) -> None:
    run(netns, ["sysctl", "-q", "-w", f"{key}={value}"])


def port_problem(
    netns: str | None, port: int, protocol: str, address: str = "0.0.0.0"
) -> str | None:
    """Why ``port`` cannot be bound on ``address`` in ``netns`` (in use, ...), or None."""
    argv = [*exec_prefix(netns), *procs.python("-c", _PORT_PROBE, str(port), protocol, address)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return None if result.returncode == 0 else (result.stdout.strip() or "cannot bind")


def connect_argv(
    netns: str | None, host: str, port: int, timeout: float, greeting: str = ""
) -> list[str]:
    """The command that tries a TCP connection to ``host:port`` from ``netns``: it exits 0
    if it gets through, else 1 with why on its stdout."""
    return [
        *exec_prefix(netns),
        *procs.python("-c", _CONNECT_PROBE, host, str(port), str(timeout), greeting),
    ]


def connect_problem(
    netns: str | None, host: str, port: int, timeout: float, greeting: str = ""
) -> str | None:
    """Why a TCP connection to ``host:port`` from ``netns`` fails (refused, timed out, the
    server does not speak first with ``greeting``, ...), or None if it gets through."""
    argv = connect_argv(netns, host, port, timeout, greeting)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    return None if result.returncode == 0 else (result.stdout.strip() or "cannot connect")
