"""Network namespaces for tests: made by the test, checked clean, deleted afterwards;
fake guests plugged into them, listeners and connection probes."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_LISTEN = (
    "import socket, sys, time\n"
    "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
    "s = socket.socket(family); s.bind((sys.argv[1], 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); time.sleep(300)\n"
)
#: Ask ``server`` (port 53, UDP or TCP) for the A records of a name; print them.
_DNS_QUERY = (
    "import socket, struct, sys\n"
    "server, name, tcp = sys.argv[1], sys.argv[2], sys.argv[3] == 'tcp'\n"
    "qname = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'\n"
    "query = struct.pack('>6H', 0x6d65, 0x0100, 1, 0, 0, 0) + qname + struct.pack('>2H', 1, 1)\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)\n"
    "s.settimeout(float(sys.argv[4])); s.connect((server, 53))\n"
    "s.sendall(struct.pack('>H', len(query)) + query if tcp else query)\n"
    "answer = s.recv(4096)[2:] if tcp else s.recv(4096)\n"
    "count, at = struct.unpack('>H', answer[6:8])[0], 12 + len(qname) + 4\n"
    "for _ in range(count):\n"
    "    at += 2 if answer[at] >= 0xC0 else answer.index(b'\\0', at) + 1 - at\n"
    "    kind, _, _, length = struct.unpack('>HHIH', answer[at:at + 10]); at += 10\n"
    "    if kind == 1: print(socket.inet_ntoa(answer[at:at + length]))\n"
    "    at += length\n"
)
_SERVE_PAGE = (
    "import http.server, sys\n"
    "class Page(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(sys.argv[2].encode())\n"
    "    def log_message(self, *args): pass\n"
    "http.server.HTTPServer((sys.argv[1], 80), Page).serve_forever()\n"
)
#: The name the outside world's DNS serves, and the page its web server answers with.
OUTSIDE_NAME = "outside.test"
OUTSIDE_PAGE = "MEDA-OUTSIDE-PAGE"
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


def another_host(
    netns: str, host_ip: str, client_ip: str, prefix: int = 24, link: str = "vh0"
) -> str:
    """A namespace joined to ``netns`` by a veth pair: another machine on a link, with
    ``client_ip`` there and ``host_ip`` on ``netns``'s end (named ``link``). Destroy it to
    remove the link."""
    client = create("meda-c")
    subprocess.run(
        ["ip", "link", "add", "vc0", "netns", client, "type", "veth", "peer", link, "netns", netns],
        check=True,
    )
    for ns, address, end in ((client, client_ip, "vc0"), (netns, host_ip, link)):
        run_in(ns, "ip", "addr", "add", f"{address}/{prefix}", "dev", end)
        run_in(ns, "ip", "link", "set", end, "up")
    return client


def destroy(name: str) -> None:
    """Kill what still runs in the namespace (it was made by the test), then delete it."""
    if not (Path("/run/netns") / name).exists():
        return
    for pid in pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Unmounting fails (EBUSY) while another process is still cloning a mount namespace
    # that holds the mount: try again for a while rather than leave the namespace behind.
    path = Path("/run/netns") / name
    for _ in range(50):
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        if not path.exists():
            return
        time.sleep(0.1)
    raise RuntimeError(f"network namespace {name} could not be deleted")


def fake_guest(host_ns: str, port: str, mac: str, address: str, gateway: str) -> str:
    """A namespace that plays a VM whose guest has root, plugged where the VM's NIC goes.

    Its ``eth0`` (``mac``, ``address`` as ``ip/prefix``, default route via ``gateway``) is
    the peer of ``port`` in ``host_ns``; a link of that name there (the VM's tap) is
    replaced. The caller attaches ``port`` and destroys the namespace (``port`` goes too).
    """
    name = create("meda-g")
    run_in(host_ns, "ip", "link", "del", port, check=False)
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            port,
            "netns",
            host_ns,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            name,
            "address",
            mac,
        ],
        check=True,
    )
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


def resolve(name: str, server: str, host: str, tcp: bool = False, timeout: float = 3) -> list[str]:
    """The A records of ``host`` that the DNS server ``server`` gives namespace ``name``
    (nothing when it does not answer)."""
    argv = [sys.executable, "-c", _DNS_QUERY, server, host, "tcp" if tcp else "udp", str(timeout)]
    result = subprocess.run(
        ["ip", "netns", "exec", name, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.split() if result.returncode == 0 else []


@contextlib.contextmanager
def outside_world(host_ns: str, host_ip: str, outside_ip: str) -> Iterator[str]:
    """Another machine beyond ``host_ns`` (see :func:`another_host`) that serves DNS on
    ``outside_ip`` (:data:`OUTSIDE_NAME` is ``outside_ip``, other names do not exist) and
    :data:`OUTSIDE_PAGE` over HTTP on port 80; yields the namespace."""
    name = another_host(host_ns, host_ip, outside_ip)
    run_in(name, "ip", "link", "set", "lo", "up")
    servers = []
    try:
        for argv in (
            [
                "dnsmasq",
                "--conf-file=/dev/null",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                f"--listen-address={outside_ip}",
                "--bind-interfaces",
                f"--address=/{OUTSIDE_NAME}/{outside_ip}",
                "--address=/#/",
                "--user=root",
                "--group=root",
                "--pid-file=",
            ],
            [sys.executable, "-c", _SERVE_PAGE, outside_ip, OUTSIDE_PAGE],
        ):
            servers.append(subprocess.Popen(["ip", "netns", "exec", name, *argv]))
        deadline = time.monotonic() + 10
        while not (
            resolve(name, outside_ip, OUTSIDE_NAME, timeout=0.5) and connects(name, outside_ip, 80)
        ):
            assert time.monotonic() < deadline, "the outside world's servers did not start"
        yield name
    finally:
        for server in servers:
            server.kill()
            server.wait()
        run_in(name, "ip", "link", "del", "vc0", check=False)  # its peer now, not when the
        destroy(name)  # kernel gets round to freeing the namespace
