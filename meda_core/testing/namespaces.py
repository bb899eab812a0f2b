"""Network namespaces for tests: made by the test, checked clean, deleted afterwards."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Snapshot:
    """What lives in a namespace: links, the nftables ruleset, processes, listening sockets."""

    links: tuple[str, ...]
    ruleset: str
    pids: tuple[int, ...]
    sockets: tuple[str, ...]


def _inode(name: str) -> int:
    return os.stat(Path("/run/netns") / name).st_ino


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is ``name``."""
    inode, found = _inode(name), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns/net").st_ino == inode:
                    found.append(int(entry.name))
            except OSError:
                continue
    return sorted(found)


def run_in(name: str, *argv: str, check: bool = True) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", name, *argv], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {name}: {result.stderr.strip()}")
    return result.stdout


def snapshot(name: str) -> Snapshot:
    links = run_in(name, "ip", "-o", "link", "show").splitlines()
    return Snapshot(
        links=tuple(sorted(line.split(":")[1].strip().split("@")[0] for line in links)),
        ruleset=run_in(name, "nft", "list", "ruleset"),
        pids=tuple(pids_in(name)),
        sockets=tuple(sorted(run_in(name, "ss", "-H", "-l", "-t", "-u", "-n").splitlines())),
    )


def create(prefix: str = "meda-t") -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def destroy(name: str) -> None:
    """Kill what still runs in the namespace (it was made by the test), then delete it."""
    if not (Path("/run/netns") / name).exists():
        return
    for pid in pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", name], check=False)
