"""Network namespaces for tests: made by the test, checked clean, deleted afterwards;
fake guests plugged into them, listeners and connection probes."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_LISTEN = (
    "import socket, sys, time\n"
    "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
    "s = socket.socket(family); s.bind((sys.argv[1], 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); time.sleep(300)\n"
)
_CONNECT = (
    "import socket, sys\n"
    "source = (sys.argv[3], 0) if sys.argv[3] else None\n"
    "socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[4]), source)\n"
)


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


def another_host(netns: str, host_ip: str, client_ip: str, prefix: int = 24) -> str:
    """A namespace joined to ``netns`` by a veth pair: another machine on a link, with
    ``client_ip`` there and ``host_ip`` on ``netns``'s end. Destroy it to remove the link."""
    client = create("meda-c")
    subprocess.run(
        ["ip", "link", "add", "vc0", "netns", client, "type", "veth", "peer", "vh0",
         "netns", netns], check=True,
    )  # fmt: skip
    for ns, address, link in ((client, client_ip, "vc0"), (netns, host_ip, "vh0")):
        run_in(ns, "ip", "addr", "add", f"{address}/{prefix}", "dev", link)
        run_in(ns, "ip", "link", "set", link, "up")
    return client


def destroy(name: str) -> None:
    """Kill what still runs in the namespace (it was made by the test), then delete it."""
    if not (Path("/run/netns") / name).exists():
        return
    for pid in pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", name], check=False)


def fake_guest(host_ns: str, port: str, mac: str, address: str, gateway: str) -> str:
    """A namespace that plays a VM whose guest has root, plugged where the VM's NIC goes.

    Its ``eth0`` (``mac``, ``address`` as ``ip/prefix``, default route via ``gateway``) is
    the peer of ``port`` in ``host_ns``; a link of that name there (the VM's tap) is
    replaced. The caller attaches ``port`` and destroys the namespace (``port`` goes too).
    """
    name = create("meda-g")
    run_in(host_ns, "ip", "link", "del", port, check=False)
    subprocess.run(
        ["ip", "link", "add", port, "netns", host_ns, "type", "veth",
         "peer", "name", "eth0", "netns", name, "address", mac],
        check=True,
    )  # fmt: skip
    run_in(name, "ip", "addr", "add", address, "dev", "eth0")
    run_in(name, "ip", "link", "set", "eth0", "up")
    run_in(name, "ip", "route", "add", "default", "via", gateway)
    return name


@contextlib.contextmanager
def listener(name: str, address: str = "0.0.0.0") -> Iterator[int]:
    """A TCP listener on ``address`` (IPv4, or IPv6 and so both) in namespace ``name``;
    yields its port."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, "-c", _LISTEN, address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


def connects(name: str, host: str, port: int, source: str = "", timeout: float = 2) -> bool:
    """Whether a TCP connection from namespace ``name`` (from ``source``) gets through."""
    argv = [sys.executable, "-c", _CONNECT, host, str(port), source, str(timeout)]
    result = subprocess.run(
        ["ip", "netns", "exec", name, *argv], capture_output=True, timeout=30, check=False
    )
    return result.returncode == 0
