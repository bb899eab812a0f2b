from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

from meda_core.backends.roles import (
    BackendContext,
    GuestAddressing,
    NetworkAttachment,
    NicKind,
    NicSpec,
)
from meda_core.errors import BackendUnavailable, Conflict
from meda_core.host import processes as procs
from meda_core.models import VM, PortForward
from meda_core.network.macs import random_mac
from meda_core.state.store import StateStore
from meda_core.testing.conformance import NetworkConformance
from meda_core.testing.host import free_port
from meda_core.testing.namespaces import (
    OUTSIDE_NAME,
    another_host,
    connects,
    destroy,
    fake_guest,
    listener,
    outside_world,
    resolve,
    run_in,
)
from meda_core.vms import seed
from meda_tapbridge import TapBridgeNetwork, dns, isolated, links, nft, uplink
from meda_tapbridge.dhcp import DhcpServer
from meda_tapbridge.settings import BridgeSettings
from meda_tapbridge.together import together

LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
)


@pytest.fixture
def in_netns(backend_context: BackendContext, netns: str) -> BackendContext:
    backend_context.settings.netns = netns
    return backend_context


class TestTapBridgeConformance(NetworkConformance):
    @pytest.fixture
    def backend(self, in_netns: BackendContext) -> TapBridgeNetwork:
        backend = TapBridgeNetwork(in_netns)
        available = backend.check_available()
        if not available.ok:
            pytest.skip(available.reason or "")
        return backend

    @pytest.fixture
    def busy_port(self, netns: str) -> Iterator[int]:
        listener = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", LISTEN],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        yield port
        listener.kill()
        listener.wait()


def test_rules_render_forwards_for_tcp_and_udp() -> None:
    text = nft.render(
        "192.168.100.0/24",
        "meda0",
        [("192.168.100.2", 8080, 80, "tcp"), ("192.168.100.3", 53, 5353, "udp")],
    )
    assert text.count("tcp dport 8080 dnat to 192.168.100.2:80") == 2  # prerouting + output
    assert text.count("udp dport 53 dnat to 192.168.100.3:5353") == 2
    assert "masquerade" in text


def test_tap_names_fit_the_kernel_limit() -> None:
    settings = BridgeSettings(subnet="10.0.0.0/16")
    assert settings.tap_name("10.0.255.254") == "mtap65534"
    assert len(settings.tap_name("10.0.255.254")) <= 15
    assert settings.gateway_ip == "10.0.0.1"
    assert "10.0.0.1" not in settings.guest_addresses()[:3]


def test_plug_builds_the_network_and_release_removes_all_of_it(
    in_netns: BackendContext, netns: str
) -> None:
    backend = TapBridgeNetwork(in_netns)
    attachment = backend.allocate("vm1")
    backend.plug("vm1", attachment)
    links = run_in(netns, "ip", "-o", "link", "show")
    assert "meda0" in links and f"{attachment.tap}" in links
    assert "table ip meda" in run_in(netns, "nft", "list", "ruleset")
    assert backend.dhcp.running() is not None
    hosts = backend.dhcp.hostsfile.read_text()
    assert hosts == f"{attachment.mac},{attachment.ip}\n"  # no name: DNS would answer it
    backend.unplug("vm1", attachment)
    backend.release("vm1")
    time.sleep(0.1)
    assert backend.dhcp.running() is None
    assert not backend.state_dir.exists()
    # The netns fixture asserts that links, rules and processes are as before.


def test_cleanup_dry_run_changes_nothing(in_netns: BackendContext, netns: str) -> None:
    backend = TapBridgeNetwork(in_netns)
    attachment = backend.allocate("ghost")
    backend.plug("ghost", attachment)  # a tap, a lease, dnsmasq and rules: no VM owns them
    found = backend.orphans()
    assert any("tap" in o for o in found) and any("lease" in o for o in found)
    assert backend.orphans() == found  # looking twice changes nothing
    assert backend.remove_orphans() == found
    assert backend.orphans() == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDA_SUBNET": "192.168.100.0/30"}, "room"),
        ({"MEDA_SUBNET": "192.168.100.5/24"}, "host bits"),
        ({"MEDA_GATEWAY": "10.0.0.1"}, "not in subnet"),
        ({"MEDA_BRIDGE": "a-very-long-bridge-name"}, "MEDA_BRIDGE"),
        ({"MEDA_DNS_SERVERS": "10.0.0.53,--conf-file=/etc/shadow"}, "MEDA_DNS_SERVERS"),
        ({"MEDA_NETNS_UPLINK_SUBNET": "10.213.255.0/31"}, "two host addresses"),
        ({"MEDA_NETNS_UPLINK_SUBNET": "192.168.100.0/30"}, "overlaps"),
    ],
)
def test_bad_settings_make_it_unavailable_with_a_reason(
    backend_context: BackendContext,
    monkeypatch: pytest.MonkeyPatch,
    env: dict,
    message: str,  # type: ignore[type-arg]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reason = TapBridgeNetwork(backend_context).check_available().reason
    assert reason and message in reason


def test_meda_makes_its_namespace_and_deletes_it_with_the_network(
    backend_context: BackendContext,
) -> None:
    name = f"meda-made-{secrets.token_hex(3)}"
    backend_context.settings.netns = name
    backend_context.settings.netns_create = True
    backend = TapBridgeNetwork(backend_context)
    try:
        assert backend.check_available().ok
        attachment = backend.allocate("vm1")
        backend.plug("vm1", attachment)
        assert Path(f"/run/netns/{name}").exists()
        backend.unplug("vm1", attachment)
        backend.release("vm1")
        assert not Path(f"/run/netns/{name}").exists()
    finally:
        destroy(name)  # only if the test failed half-way


def test_a_vm_never_started_is_released_before_meda_made_its_namespace(
    backend_context: BackendContext,
) -> None:
    """A VM created, never started, deleted: the namespace meda would make at the first
    start does not exist yet, so there is nothing on the host to remove."""
    name = f"meda-unmade-{secrets.token_hex(3)}"
    backend_context.settings.netns = name
    backend_context.settings.netns_create = True
    backend = TapBridgeNetwork(backend_context)
    attachment = backend.allocate("vm1")
    backend.unplug("vm1", attachment)
    backend.release("vm1")
    backend.apply_forwards()
    assert backend.context.leases.all(backend.config.bridge) == []
    assert not Path(f"/run/netns/{name}").exists()


# ---- guests with root, and what they must not reach ----
# Each "guest" is a namespace plugged into meda's bridge where its VM's tap would be, with
# the VM's leased MAC and address: root there can do anything a guest kernel can.

OUTSIDE_HOST, OUTSIDE_CLIENT = "10.200.0.1", "10.200.0.2"


@dataclass(frozen=True)
class Guest:
    vm: str
    ns: str
    ip: str
    mac: str
    gateway: str


def _store(backend: TapBridgeNetwork) -> StateStore:
    """The store meda keeps forwards in, as the core changes it (backends only read it)."""
    return StateStore(backend.context.settings.db_path)


@pytest.fixture
def tapbridge(in_netns: BackendContext) -> Iterator[TapBridgeNetwork]:
    """The backend; whatever VMs a test leaves are released (taps, DHCP, rules, bridge)."""
    backend = TapBridgeNetwork(in_netns)
    yield backend
    for lease in in_netns.leases.all(backend.config.bridge):
        backend.release(lease.vm)


@pytest.fixture
def guests(tapbridge: TapBridgeNetwork, netns: str) -> Iterator[Callable[[str], Guest]]:
    """Make a VM's lease and NIC (tap, rules, DHCP) and plug a fake guest in its place."""
    made: list[Guest] = []

    def plug(vm: str) -> Guest:
        attachment = tapbridge.allocate(vm)
        tapbridge.plug(vm, attachment)
        assert attachment.tap and attachment.ip and attachment.gateway
        prefix = tapbridge.config.network.prefixlen
        ns = fake_guest(
            netns, attachment.tap, attachment.mac, f"{attachment.ip}/{prefix}", attachment.gateway
        )
        guest = Guest(vm, ns, attachment.ip, attachment.mac, attachment.gateway)
        made.append(guest)
        run_in(netns, "ip", "link", "set", attachment.tap, "master", tapbridge.config.bridge, "up")
        # The host reaches it: the fake guest is plugged in and its answers get through.
        run_in(netns, "busybox", "ping", "-c", "1", "-W", "5", attachment.ip)
        return guest

    yield plug
    for guest in made:
        destroy(guest.ns)  # the tapbridge fixture then releases the VMs


@pytest.fixture
def listen(netns: str) -> Iterator[Callable[[str, str], int]]:
    """Start TCP listeners (namespace, address); stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda ns, address: stack.enter_context(listener(ns, address))


@pytest.fixture
def outside(netns: str) -> Iterator[str]:
    """Another machine the host routes guests to (a namespace behind a veth pair)."""
    client = another_host(netns, OUTSIDE_HOST, OUTSIDE_CLIENT)
    yield client
    destroy(client)  # vc0 goes with it, and vh0 with its peer


def test_a_guest_cannot_reach_the_hosts_loopback_through_its_gateway(
    guests: Callable[[str], Guest], listen: Callable[[str, str], int], netns: str
) -> None:
    port = listen(netns, "127.0.0.1")  # as the token-less API listens on 127.0.0.1
    guest = guests("vm1")
    # The guest makes its gateway the next hop for 127.0.0.0/8 and accepts the answers.
    run_in(guest.ns, "ip", "route", "add", "127.0.0.0/8", "via", guest.gateway)
    run_in(guest.ns, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.route_localnet=1")
    assert not connects(guest.ns, "127.0.0.1", port)


def test_forwards_still_answer_on_loopback_and_on_the_gateway(
    tapbridge: TapBridgeNetwork,
    guests: Callable[[str], Guest],
    listen: Callable[[str, str], int],
    netns: str,
) -> None:
    guest = guests("web")
    guest_port = listen(guest.ns, "0.0.0.0")
    _store(tapbridge).add_forward("web", PortForward(host_port=8080, guest_port=guest_port))
    tapbridge.apply_forwards()
    assert connects(netns, "127.0.0.1", 8080)
    assert connects(netns, guest.gateway, 8080)


def test_a_guest_reaches_no_host_service_but_dhcp(
    guests: Callable[[str], Guest],
    listen: Callable[[str, str], int],
    netns: str,
    outside: str,
) -> None:
    port = listen(netns, "::")  # IPv4 and IPv6
    guest = guests("vm1")
    assert not connects(guest.ns, guest.gateway, port)
    assert not connects(guest.ns, OUTSIDE_HOST, port)  # another address of the host
    # meda's network is IPv4, but the bridge has an IPv6 link-local address all the same.
    link_local(guest.ns, "eth0")  # the guest's own must be usable first
    assert not connects(guest.ns, f"{link_local(netns, 'meda0')}%eth0", port)
    # meda's DHCP still answers, and the guest still gets out (NAT) to other machines.
    dhcp = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            guest.ns,
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert f"lease of {guest.ip} obtained" in dhcp.stderr, dhcp.stderr
    assert connects(guest.ns, OUTSIDE_CLIENT, listen(outside, OUTSIDE_CLIENT))


@pytest.fixture(params=[False, True], ids=["plain-bridge", "br_netfilter"])
def bridge_netfilter(request: pytest.FixtureRequest, netns: str) -> bool:
    """Bridged IPv4 through the ip hooks (br_netfilter, as Docker hosts have) or not."""
    on: bool = request.param
    if not Path("/proc/sys/net/bridge").exists():
        if on:
            pytest.skip("br_netfilter is not loaded")
        return on
    run_in(netns, "sysctl", "-q", "-w", f"net.bridge.bridge-nf-call-iptables={int(on)}")
    return on


def link_local(ns: str, device: str) -> str:
    """The IPv6 link-local address of ``device``, once it is usable (DAD done)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = run_in(ns, "ip", "-6", "-o", "addr", "show", "dev", device, "scope", "link")
        if shown and "tentative" not in shown:
            return shown.split()[3].split("/")[0]
        time.sleep(0.2)
    pytest.skip(f"{device} has no IPv6 link-local address")


@pytest.mark.parametrize("allowed", [False, True], ids=["isolated", "allowed"])
def test_guests_reach_each_other_only_when_allowed(
    tapbridge: TapBridgeNetwork,
    guests: Callable[[str], Guest],
    listen: Callable[[str, str], int],
    monkeypatch: pytest.MonkeyPatch,
    bridge_netfilter: bool,
    allowed: bool,
) -> None:
    if allowed:
        monkeypatch.setenv("MEDA_GUEST_TO_GUEST", "1")
    monkeypatch.setenv("MEDA_FORWARD_ADDRESS", "0.0.0.0")  # in meda_side, a test namespace
    a, b = guests("a"), guests("b")
    port = listen(b.ns, "0.0.0.0")
    assert connects(a.ns, b.ip, port) is allowed  # on the bridge
    _store(tapbridge).add_forward("b", PortForward(host_port=8080, guest_port=port))
    tapbridge.apply_forwards()
    assert connects(a.ns, a.gateway, 8080) is allowed  # through b's forward
    run_in(a.ns, "ip", "route", "add", f"{b.ip}/32", "via", a.gateway)
    assert connects(a.ns, b.ip, port) is allowed  # routed through the host


def test_a_guest_cannot_take_another_guests_address(
    tapbridge: TapBridgeNetwork,
    guests: Callable[[str], Guest],
    listen: Callable[[str, str], int],
    netns: str,
    outside: str,
) -> None:
    a = guests("a")
    other = tapbridge.allocate("b")  # a VM whose tap is there but whose guest is quiet
    tapbridge.plug("b", other)
    port = listen(outside, OUTSIDE_CLIENT)
    assert connects(a.ns, OUTSIDE_CLIENT, port)
    for address in (str(other.ip), "192.168.100.200"):  # another guest's, and a free one
        run_in(a.ns, "ip", "addr", "add", f"{address}/32", "dev", "eth0")
        assert not connects(a.ns, OUTSIDE_CLIENT, port, source=address)


def test_a_guest_cannot_take_another_guests_mac(
    tapbridge: TapBridgeNetwork,
    guests: Callable[[str], Guest],
    listen: Callable[[str, str], int],
    netns: str,
    outside: str,
) -> None:
    a = guests("a")
    other = tapbridge.allocate("b")
    tapbridge.plug("b", other)
    port = listen(outside, OUTSIDE_CLIENT)
    run_in(a.ns, "ip", "link", "set", "eth0", "address", other.mac)
    run_in(netns, "ip", "neigh", "flush", "all")  # the host has to ask who has a's address
    assert not connects(a.ns, OUTSIDE_CLIENT, port)


@pytest.fixture
def isolated_guest(tapbridge: TapBridgeNetwork) -> Iterator[tuple[NetworkAttachment, str]]:
    """A template's NIC in its own namespace, and a fake guest behind it (its namespace)
    with the address every template's guest has; DHCP is left out (the namespace's
    dnsmasq stays bound to the tap the fake guest replaces)."""
    attachment = tapbridge.allocate("tmpl", isolated=True)
    tapbridge.plug("tmpl", attachment)
    vm_ns = attachment.netns
    assert vm_ns is not None
    guest_ns = fake_guest(
        vm_ns, isolated.TAP, random_mac(), f"{isolated.GUEST_IP}/30", isolated.GATEWAY_IP
    )
    try:
        run_in(vm_ns, "ip", "link", "set", isolated.TAP, "address", isolated.GATEWAY_MAC)
        run_in(vm_ns, "ip", "addr", "add", f"{isolated.GATEWAY_IP}/30", "dev", isolated.TAP)
        run_in(vm_ns, "ip", "link", "set", isolated.TAP, "up")
        yield attachment, guest_ns
    finally:
        destroy(guest_ns)
        tapbridge.unplug("tmpl", attachment)


def test_a_guest_in_its_own_namespace_reaches_neither_it_nor_the_host(
    isolated_guest: tuple[NetworkAttachment, str], listen: Callable[[str, str], int], netns: str
) -> None:
    attachment, guest_ns = isolated_guest
    vm_ns = attachment.netns
    assert vm_ns is not None and attachment.ip and attachment.gateway
    assert connects(netns, attachment.ip, listen(guest_ns, "0.0.0.0"))  # NAT still works
    in_vm_ns, on_host = listen(vm_ns, "0.0.0.0"), listen(netns, "0.0.0.0")
    assert not connects(guest_ns, isolated.GATEWAY_IP, in_vm_ns)
    assert not connects(guest_ns, attachment.ip, in_vm_ns)
    assert not connects(guest_ns, attachment.gateway, on_host)
    loopback = listen(vm_ns, "127.0.0.1")
    run_in(guest_ns, "ip", "route", "add", "127.0.0.0/8", "via", isolated.GATEWAY_IP)
    run_in(guest_ns, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.route_localnet=1")
    assert not connects(guest_ns, "127.0.0.1", loopback)


def udp_arriving(netns: str, guest: Guest, port: int, size: int, source_port: int = 0) -> int:
    """Of 1000 UDP packets of ``size`` bytes the guest sends at once to its gateway's
    ``port``, how many pass meda's input chain (counted by a hook after it)."""
    run_in(
        netns,
        "nft",
        "table ip probe { chain input { type filter hook input priority 10;"
        f" udp dport {port} counter; }}; }}",
    )
    try:
        flood = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            f" s.bind(({guest.ip!r}, {source_port}));"
            f" [s.sendto(b'x' * {size}, ({guest.gateway!r}, {port})) for _ in range(1000)]"
        )
        run_in(guest.ns, sys.executable, "-c", flood)
        counted = run_in(netns, "nft", "list", "table", "ip", "probe")
        return int(counted.split("counter packets ")[1].split()[0])
    finally:
        run_in(netns, "nft", "delete", "table", "ip", "probe")


def test_a_guest_flooding_dhcp_reaches_the_host_at_a_bounded_rate(
    guests: Callable[[str], Guest], netns: str
) -> None:
    """dnsmasq parses DHCP as root and would log it all: a guest sending 1000 requests at
    once gets a burst and a trickle through, not the flood."""
    guest = guests("noisy")
    assert 0 < udp_arriving(netns, guest, 67, 300, source_port=68) <= 100


# ---- forwards in MEDA_NETNS mode: answered in meda's own namespace by a proxy ----
# meda (this test) runs in the root namespace, its network in the test's; proxies listen
# on 127.0.0.1 only, so nothing here is reachable from beyond this host.

ECHO = (
    "import socket, sys, threading\n"
    "tcp = sys.argv[1] == 'tcp'; tag = sys.argv[2].encode()\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 0)); print(s.getsockname()[1], flush=True)\n"
    "def echo(c):\n"
    "    with c:\n"
    "        while data := c.recv(65536): c.sendall(tag + data)\n"
    "if not tcp:\n"
    "    while True:\n"
    "        data, peer = s.recvfrom(65536); s.sendto(tag + data, peer)\n"
    "s.listen()\n"
    "while True: threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()\n"
)
TALK = (
    "import socket, sys\n"
    "tcp = sys.argv[3] == 'tcp'\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)\n"
    "s.settimeout(3)\n"
    "try:\n"
    "    s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b'ping')\n"
    "    print(s.recv(100).decode(), end='')\n"
    "except OSError:\n"
    "    pass\n"
)
MEDA_SIDE_HOST, MEDA_SIDE_CLIENT = "10.201.0.2", "10.201.0.1"


def talk(ns: str | None, host: str, port: int, protocol: str = "tcp") -> str:
    """What ``host:port`` answers to ``ping`` from namespace ``ns`` (None: this one)."""
    argv = [sys.executable, "-c", TALK, host, str(port), protocol]
    prefix = [] if ns is None else ["ip", "netns", "exec", ns]
    result = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30)
    return result.stdout


@pytest.fixture
def echo() -> Iterator[Callable[[str, str, str], int]]:
    """Start echo servers (namespace, tcp|udp, tag) that answer ``tag + data``; their port."""
    started: list[subprocess.Popen[str]] = []

    def start(ns: str, protocol: str, tag: str) -> int:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", ECHO, protocol, tag]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None
        return int(process.stdout.readline())

    yield start
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def on_loopback(tapbridge: TapBridgeNetwork) -> TapBridgeNetwork:
    tapbridge.context.settings.forward_address = IPv4Address("127.0.0.1")
    return tapbridge


def proxy_pid(tapbridge: TapBridgeNetwork, forward: PortForward) -> int:
    record = tapbridge.proxies.records()[f"{forward.protocol.value}-{forward.host_port}"]
    assert record is not None
    return record.runtime.pid


def port_is_free(port: int, protocol: str = "tcp") -> bool:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_a_netns_forward_answers_in_the_namespace_meda_runs_in(
    on_loopback: TapBridgeNetwork,
    guests: Callable[[str], Guest],
    echo: Callable[[str, str, str], int],
    netns: str,
    protocol: str,
) -> None:
    guest = guests("web")
    forward = PortForward(
        host_port=free_port(), guest_port=echo(guest.ns, protocol, "web:"), protocol=protocol
    )
    assert on_loopback.check_host_port(forward) is None
    _store(on_loopback).add_forward("web", forward)
    on_loopback.apply_forwards()
    port = forward.host_port
    assert talk(None, "127.0.0.1", port, protocol) == "web:ping"  # here, through the proxy
    assert talk(netns, "127.0.0.1", port, protocol) == "web:ping"  # there, by the DNAT
    assert [(x.address, x.netns, x.by) for x in on_loopback.forward_listeners(forward)] == [
        (f"127.0.0.1:{port}", None, "proxy"),
        (f"0.0.0.0:{port}", netns, "nftables"),
    ]
    # The proxy lives in meda's network namespace as nobody, known by its pid file.
    pid = proxy_pid(on_loopback, forward)
    status = Path(f"/proc/{pid}/status").read_text()
    assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
    assert not port_is_free(port, protocol) and on_loopback.check_host_port(forward)

    _store(on_loopback).remove_forwards("web", forward)
    on_loopback.apply_forwards()
    assert port_is_free(port, protocol) and talk(None, "127.0.0.1", port, protocol) == ""
    assert procs.start_ticks(pid) is None
    assert list(on_loopback.proxies.directory.iterdir()) == []


def test_a_proxy_comes_back_at_restore_and_cleanup_stops_a_stray_one(
    on_loopback: TapBridgeNetwork,
    guests: Callable[[str], Guest],
    echo: Callable[[str, str, str], int],
) -> None:
    guest = guests("web")
    forward = PortForward(host_port=free_port(), guest_port=echo(guest.ns, "tcp", "web:"))
    _store(on_loopback).add_forward("web", forward)
    on_loopback.apply_forwards()
    os.kill(proxy_pid(on_loopback, forward), signal.SIGKILL)  # as after a host reboot
    time.sleep(0.2)
    assert talk(None, "127.0.0.1", forward.host_port) == ""
    # A forward whose proxy is down has no orphan (its fake VM's lease and tap have).
    assert not [found for found in on_loopback.orphans() if "proxy" in found]
    on_loopback.restore()
    assert talk(None, "127.0.0.1", forward.host_port) == "web:ping"

    _store(on_loopback).remove_forwards("web", forward)  # as a crash half-way would
    pid = proxy_pid(on_loopback, forward)
    found = on_loopback.orphans()
    assert f"forward proxy tcp-{forward.host_port} (pid {pid})" in found
    assert on_loopback.remove_orphans() == found
    assert procs.start_ticks(pid) is None and port_is_free(forward.host_port)


def test_a_port_taken_in_meda_s_namespace_is_refused_and_starts_no_proxy(
    on_loopback: TapBridgeNetwork, guests: Callable[[str], Guest]
) -> None:
    guests("web")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        forward = PortForward(host_port=busy.getsockname()[1], guest_port=80)
        problem = on_loopback.check_host_port(forward)
        assert problem and "meda's own namespace" in problem
        _store(on_loopback).add_forward("web", forward)  # as if it was taken just now
        with pytest.raises(Conflict, match="in use"):
            on_loopback.apply_forwards()
    assert list(on_loopback.proxies.directory.iterdir()) == []


@pytest.fixture
def meda_side(tapbridge: TapBridgeNetwork, netns: str) -> Iterator[str]:
    """A namespace to run meda in, joined to its network's namespace by a veth pair, as a
    host whose MEDA_NETNS has an uplink; its proxies are stopped before it goes."""
    side = another_host(netns, MEDA_SIDE_CLIENT, MEDA_SIDE_HOST)
    run_in(side, "ip", "link", "set", "lo", "up")
    yield side
    tapbridge.proxies.sync([])  # a socket in it would keep it, and the veth pair, alive
    destroy(side)


APPLY = (
    "import sys\n"
    "from pathlib import Path\n"
    "from meda_core.settings import Settings\n"
    "from meda_core.backends.context import backend_context\n"
    "from meda_core.state.store import StateStore\n"
    "from meda_tapbridge import TapBridgeNetwork\n"
    "settings = Settings(home=Path(sys.argv[1]), netns=sys.argv[2])\n"
    "TapBridgeNetwork(backend_context(settings, StateStore(settings.db_path))).apply_forwards()\n"
)


@pytest.mark.parametrize("allowed", [False, True], ids=["isolated", "allowed"])
def test_a_guest_cannot_reach_another_guest_through_its_proxy(
    tapbridge: TapBridgeNetwork,
    guests: Callable[[str], Guest],
    echo: Callable[[str, str, str], int],
    listen: Callable[[str, str], int],
    meda_side: str,
    netns: str,
    monkeypatch: pytest.MonkeyPatch,
    allowed: bool,
) -> None:
    """A guest routed out of meda's namespace (masqueraded as that namespace's uplink
    address) to the address where b's forward listens is turned away by the proxy, as the
    DNAT path turns it away, unless guests may reach each other."""
    if allowed:
        monkeypatch.setenv("MEDA_GUEST_TO_GUEST", "1")
    monkeypatch.setenv("MEDA_FORWARD_ADDRESS", "0.0.0.0")  # in meda_side, a test namespace
    a, b = guests("a"), guests("b")
    forward = PortForward(host_port=8080, guest_port=echo(b.ns, "tcp", "b:"))
    _store(tapbridge).add_forward("b", forward)
    home = str(tapbridge.context.settings.home)
    ip_netns_exec = ["ip", "netns", "exec", meda_side, sys.executable, "-c", APPLY]
    subprocess.run([*ip_netns_exec, home, netns], check=True, timeout=60)
    assert talk(meda_side, "127.0.0.1", 8080) == "b:ping"  # meda's side is served
    assert connects(a.ns, MEDA_SIDE_HOST, listen(meda_side, MEDA_SIDE_HOST))  # a gets there
    assert (talk(a.ns, MEDA_SIDE_HOST, 8080) == "b:ping") is allowed


# ---- DNS and the way out ----


@pytest.fixture
def world(netns: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The outside world beyond the host: DNS (``outside.test``) and a web server, at
    OUTSIDE_CLIENT; meda's DNS is told to ask it."""
    monkeypatch.setenv("MEDA_DNS_SERVERS", OUTSIDE_CLIENT)
    with outside_world(netns, OUTSIDE_HOST, OUTSIDE_CLIENT) as name:
        yield name


def dhcp_offer(ns: str, tmp_path: Path) -> str:
    """The router and name server DHCP gives a guest in ``ns`` (which keeps its address)."""
    script = tmp_path / "show-offer"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "router=$router dns=$dns"\n')
    script.chmod(0o755)
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip()


def test_a_guest_gets_a_route_and_dns_at_its_gateway_which_asks_upstream(
    guests: Callable[[str], Guest], world: str, tmp_path: Path
) -> None:
    guest = guests("vm1")
    assert dhcp_offer(guest.ns, tmp_path) == f"router={guest.gateway} dns={guest.gateway}"
    assert resolve(guest.ns, guest.gateway, OUTSIDE_NAME) == [OUTSIDE_CLIENT]
    assert resolve(guest.ns, guest.gateway, OUTSIDE_NAME, tcp=True) == [OUTSIDE_CLIENT]
    assert connects(guest.ns, OUTSIDE_CLIENT, 80)  # and gets there (NAT)
    # DNS is the gateway's only: not on the host's other addresses.
    assert resolve(guest.ns, OUTSIDE_HOST, OUTSIDE_NAME, timeout=1) == []
    assert resolve(guest.ns, OUTSIDE_HOST, OUTSIDE_NAME, tcp=True, timeout=1) == []


def test_a_guest_in_its_own_namespace_gets_dns_at_its_own_gateway(
    world: str, isolated_guest: tuple[NetworkAttachment, str]
) -> None:  # the world first: meda's DNS is told to ask it before the network is made
    _, guest_ns = isolated_guest
    gateway = isolated.GATEWAY_IP
    assert resolve(guest_ns, gateway, OUTSIDE_NAME) == [OUTSIDE_CLIENT]
    assert resolve(guest_ns, gateway, OUTSIDE_NAME, tcp=True) == [OUTSIDE_CLIENT]
    assert connects(guest_ns, OUTSIDE_CLIENT, 80)


def test_the_upstream_name_servers_follow_the_setting(
    tapbridge: TapBridgeNetwork,
    guests: Callable[[str], Guest],
    world: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guest = guests("vm1")
    assert resolve(guest.ns, guest.gateway, OUTSIDE_NAME) == [OUTSIDE_CLIENT]
    monkeypatch.setenv("MEDA_DNS_SERVERS", "192.0.2.53")  # nobody there
    guests("vm2")  # the network is ensured again: dnsmasq re-reads its servers
    assert resolve(guest.ns, guest.gateway, OUTSIDE_NAME, timeout=1) == []


@pytest.mark.parametrize(
    "metadata",
    ["169.254.169.254", "100.100.100.200", "168.63.129.16"],
    ids=["link-local", "alibaba", "azure-wireserver"],
)
def test_a_guest_cannot_reach_clouds_metadata_services_beyond_the_host(
    guests: Callable[[str], Guest],
    listen: Callable[[str, str], int],
    netns: str,
    outside: str,
    metadata: str,
) -> None:
    """A cloud's metadata service answers whoever the host routes to it: link-local
    addresses (never to be routed, RFC 3927) and the other clouds' are blocked."""
    run_in(outside, "ip", "addr", "add", f"{metadata}/32", "dev", "vc0")
    run_in(netns, "ip", "route", "add", f"{metadata}/32", "dev", "vh0")  # goes with vh0
    port = listen(outside, "0.0.0.0")
    guest = guests("vm1")
    assert connects(netns, metadata, port)  # the host reaches it
    assert connects(guest.ns, OUTSIDE_CLIENT, port)
    assert not connects(guest.ns, metadata, port)


def test_blocked_destinations_follow_the_setting(
    guests: Callable[[str], Guest],
    listen: Callable[[str, str], int],
    outside: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDA_BLOCKED_DESTINATIONS", f"{OUTSIDE_CLIENT}/32")
    port = listen(outside, "0.0.0.0")
    assert not connects(guests("vm1").ns, OUTSIDE_CLIENT, port)


@pytest.mark.parametrize("value", ["10.0.0.1/8", "fd00::/8", "nonsense"])
def test_bad_blocked_destinations_are_refused(
    in_netns: BackendContext, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MEDA_BLOCKED_DESTINATIONS", value)
    available = TapBridgeNetwork(in_netns).check_available()
    assert not available.ok and "MEDA_BLOCKED_DESTINATIONS" in (available.reason or "")


HOLD_DNS = (
    "import socket, sys, time\n"
    "socks = [socket.socket() for _ in range(int(sys.argv[2]))]\n"
    "for s in socks: s.setblocking(False); s.connect_ex((sys.argv[1], 53))\n"
    "time.sleep(2)\n"
    "def up(s):\n"
    "    try: return bool(s.getpeername())\n"
    "    except OSError: return False\n"
    "print(sum(map(up, socks)), flush=True); time.sleep(60)\n"
)


def test_one_guest_cannot_hold_every_tcp_dns_connection(
    guests: Callable[[str], Guest], world: str
) -> None:
    """dnsmasq serves about 20 TCP connections at once; a guest gets a few of them."""
    hog, victim = guests("hog"), guests("victim")
    argv = ["ip", "netns", "exec", hog.ns, sys.executable, "-c", HOLD_DNS, hog.gateway, "30"]
    holding = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert holding.stdout is not None
        assert int(holding.stdout.readline()) == nft.DNS_TCP_PER_GUEST
        assert resolve(victim.ns, victim.gateway, OUTSIDE_NAME, tcp=True) == [OUTSIDE_CLIENT]
    finally:
        holding.kill()
        holding.wait()


def test_guests_learn_no_names_of_other_vms_from_dns(
    guests: Callable[[str], Guest], world: str, tmp_path: Path
) -> None:
    a, b = guests("tenant-a"), guests("secret-project-b")
    # b's DHCP still gives it its address (its name comes from its seed), and a name it
    # sends then is not taken into DNS either.
    script = tmp_path / "bound"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "ip=$ip"\n')
    script.chmod(0o755)
    offer = run_in(
        b.ns,
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-n",
        "-q",
        "-t",
        "3",
        "-T",
        "1",
        "-x",
        "hostname:tenant-a",
        "-s",
        str(script),
    )
    assert f"ip={b.ip}" in offer
    assert resolve(a.ns, a.gateway, "secret-project-b", timeout=1) == []
    assert resolve(b.ns, b.gateway, "tenant-a", timeout=1) == []
    assert resolve(a.ns, a.gateway, OUTSIDE_NAME) == [OUTSIDE_CLIENT]


def test_a_guest_flooding_dns_reaches_the_host_at_a_bounded_rate(
    guests: Callable[[str], Guest], netns: str
) -> None:
    """dnsmasq parses DNS as root: 1000 queries at once get a burst through, not the flood."""
    guest = guests("noisy")
    assert 0 < udp_arriving(netns, guest, 53, 40) <= 300


def test_upstream_name_servers_are_the_setting_else_the_hosts_that_are_not_loopback(
    tmp_path: Path,
) -> None:
    stub, resolved = tmp_path / "resolv.conf", tmp_path / "resolved.conf"
    stub.write_text("# systemd-resolved's stub\nnameserver 127.0.0.53\noptions edns0\n")
    resolved.write_text("nameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\n")
    assert dns.upstream_servers([], [stub, resolved]) == ["10.0.0.53"]
    assert dns.upstream_servers(["192.0.2.1"], [stub, resolved]) == ["192.0.2.1"]
    stub.write_text("nameserver 192.0.2.53\n")  # a plain resolv.conf is used as it is
    assert dns.upstream_servers([], [stub, resolved]) == ["192.0.2.53"]
    assert dns.upstream_servers([], [tmp_path / "missing"]) == []


def test_no_upstream_name_server_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    DhcpServer(tmp_path, None, "meda0").write_servers([])
    assert "no upstream name server" in caplog.text
    assert (tmp_path / "dns-servers").read_text() == ""


PLUG_A_GHOST = (
    "from meda_core.settings import Settings\n"
    "from meda_core.backends.context import backend_context\n"
    "from meda_core.state.store import StateStore\n"
    "from meda_tapbridge import TapBridgeNetwork\n"
    "settings = Settings()\n"
    "settings.home.mkdir(parents=True, exist_ok=True)\n"
    "backend = TapBridgeNetwork(backend_context(settings, StateStore(settings.db_path)))\n"
    "backend.plug('ghost', backend.allocate('ghost'))\n"
)


def test_the_uplink_leads_out_not_in_and_cleanup_finds_it(netns: str, tmp_path: Path) -> None:
    """meda runs inside the test's namespace, as on a host of its own, with a MEDA_NETNS it
    makes; a NIC no VM owns (its state lost) leaves the network, uplink and all, behind."""
    inner = f"meda-n-{secrets.token_hex(3)}"
    env = {
        **os.environ,
        "MEDA_HOME": str(tmp_path / "home"),
        "MEDA_NETNS": inner,
        "MEDA_NETNS_CREATE": "1",
        "MEDA_NETNS_UPLINK": "1",
    }
    inside = ["nsenter", f"--net=/run/netns/{netns}", sys.executable]
    run_in(netns, "ip", "link", "set", "lo", "up")
    try:
        subprocess.run([*inside, "-c", PLUG_A_GHOST], env=env, check=True, timeout=60)
        outer = uplink.outer_name(inner)
        assert outer in run_in(netns, "ip", "-o", "link", "show")
        assert f"default via 10.213.255.1 dev {uplink.INNER}" in run_in(inner, "ip", "route")
        with listener(netns, "0.0.0.0") as port:
            assert connects(netns, "10.213.255.1", port)
            assert not connects(inner, "10.213.255.1", port, timeout=1)  # meda's namespace
        cleanup = [*inside, "-m", "meda_cli.main", "cleanup"]
        listed = subprocess.run(
            [*cleanup, "--dry-run"], env=env, capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert f"would remove: uplink {outer} of network namespace '{inner}'" in listed, listed
        assert f"nftables table inet {uplink.table_name(inner)}" in listed, listed
        subprocess.run(cleanup, env=env, capture_output=True, timeout=60, check=True)
        assert not Path("/run/netns", inner).exists()
        # The netns fixture checks that the uplink and its table left the test's namespace.
    finally:
        destroy(inner)  # only when the test failed half-way


PLUG_A_GUEST = (
    PLUG_A_GHOST.replace("backend.plug('ghost', backend.allocate('ghost'))\n", "") + "import json\n"
    "a = backend.allocate('vm1'); backend.plug('vm1', a)\n"
    "print(json.dumps([a.tap, a.mac, a.ip, a.gateway, backend.config.bridge,"
    " backend.config.network.prefixlen]))\n"
)


def test_the_uplink_leads_out_by_the_default_route_not_into_the_hosts_other_networks(
    netns: str, tmp_path: Path
) -> None:
    """meda's namespace (the test's) has a way out (its default route) and a network of
    containers or other VMs on a bridge; a guest behind the uplink reaches only the former."""
    inner = f"meda-n-{secrets.token_hex(3)}"
    env = {
        **os.environ,
        "MEDA_HOME": str(tmp_path / "home"),
        "MEDA_NETNS": inner,
        "MEDA_NETNS_CREATE": "1",
        "MEDA_NETNS_UPLINK": "1",
    }
    inside = ["nsenter", f"--net=/run/netns/{netns}", sys.executable]
    run_in(netns, "ip", "link", "set", "lo", "up")
    world = another_host(netns, OUTSIDE_HOST, OUTSIDE_CLIENT)
    internal = another_host(netns, "172.31.99.1", "172.31.99.2", link="vh1")
    run_in(netns, "ip", "route", "add", "default", "via", OUTSIDE_CLIENT)
    guest = None
    try:
        out = subprocess.run(
            [*inside, "-c", PLUG_A_GUEST],
            env=env,
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        ).stdout
        tap, mac, ip, gateway, bridge, prefix = json.loads(out.strip().splitlines()[-1])
        guest = fake_guest(inner, tap, mac, f"{ip}/{prefix}", gateway)
        run_in(inner, "ip", "link", "set", tap, "master", bridge, "up")
        with listener(world, "0.0.0.0") as out_port, listener(internal, "0.0.0.0") as in_port:
            assert connects(guest, OUTSIDE_CLIENT, out_port)
            assert connects(netns, "172.31.99.2", in_port)  # the host reaches its network
            assert not connects(guest, "172.31.99.2", in_port, timeout=1)
    finally:
        if guest:
            destroy(guest)
        subprocess.run(
            [*inside, "-m", "meda_cli.main", "cleanup"], env=env, capture_output=True, timeout=60
        )
        for link in ("vh0", "vh1"):  # now: a deleted namespace's links go some time later
            run_in(netns, "ip", "link", "del", link, check=False)
        destroy(internal)
        destroy(world)
        destroy(inner)


def test_a_namespace_with_no_way_out_is_said(
    tapbridge: TapBridgeNetwork, caplog: pytest.LogCaptureFixture
) -> None:
    """With the uplink off (the netns fixture's MEDA_NETNS_UPLINK=0) and no route of its
    own, the namespace's guests can resolve and reach nothing beyond it: meda says so."""
    tapbridge.plug("vm1", tapbridge.allocate("vm1"))
    assert "has no route out (MEDA_NETNS_UPLINK=0)" in caplog.text


def test_the_guest_is_addressed_statically_on_the_bridge_by_dhcp_in_its_own_namespace(
    backend_context: BackendContext,
) -> None:
    """What the seed's network-config says comes from the backend, as meda wrote it when
    the core named tap-bridge itself."""
    network = TapBridgeNetwork(backend_context)
    attachment = NetworkAttachment(
        mac="52:54:00:12:34:56",
        ip="10.0.0.5",
        tap="mtap5",
        subnet="10.0.0.0/24",
        gateway="10.0.0.1",
    )
    addressing = network.guest_addressing(attachment)
    assert addressing == GuestAddressing.static("10.0.0.5/24", "10.0.0.1", ("10.0.0.1",))
    vm = VM.model_construct(mac=attachment.mac)
    assert yaml.safe_load(seed.network_config(vm, addressing) or "") == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": "52:54:00:12:34:56"},
                "set-name": "eth0",
                "addresses": ["10.0.0.5/24"],
                "gateway4": "10.0.0.1",
                "nameservers": {"addresses": ["10.0.0.1"]},
            }
        },
    }
    own = dataclasses.replace(attachment, tap="mveth5", netns="meda-vm-x-5")
    assert network.guest_addressing(own) == GuestAddressing.dhcp()


def test_a_nic_in_the_vms_own_namespace_is_its_fixed_tap(backend_context: BackendContext) -> None:
    """The dry run shows the tap the VM's process opens: in its own namespace, the one
    name isolated.py gives it (the core used to copy that name)."""
    network = TapBridgeNetwork(backend_context)
    shared = NetworkAttachment(mac="52:54:00:12:34:56", ip="10.0.0.5", tap="mtap5")
    assert network.nic(shared) == NicSpec(kind=NicKind.TAP, mac=shared.mac, tap="mtap5")
    own = dataclasses.replace(shared, tap="mveth5", netns="meda-vm-x-5")
    assert network.nic(own) == NicSpec(
        kind=NicKind.TAP, mac=own.mac, tap=isolated.TAP, netns="meda-vm-x-5"
    )
    assert network.guest_endpoint("vm", own, [], 22) == ("10.0.0.5", 22)


def test_a_namespace_with_no_way_out_is_said_once_as_the_network_comes_up(
    tapbridge: TapBridgeNetwork, caplog: pytest.LogCaptureFixture
) -> None:
    """Not at every start: the check is a subprocess each VM would wait on."""
    tapbridge.plug("vm1", tapbridge.allocate("vm1"))
    caplog.clear()
    tapbridge.plug("vm2", tapbridge.allocate("vm2"))
    assert "has no route out" not in caplog.text


def test_a_plug_makes_the_tap_on_the_bridge_with_its_rules_and_lease(
    tapbridge: TapBridgeNetwork,
) -> None:
    """The overlapped steps of a plug all happened: tap on the bridge and up, the lease
    in dnsmasq's hosts file, the port in the rules."""
    attachment = tapbridge.allocate("vm1")
    tapbridge.plug("vm1", attachment)
    ns, bridge = tapbridge.ns, tapbridge.config.bridge
    assert attachment.tap is not None and ns is not None
    link = run_in(ns, "ip", "-o", "link", "show", attachment.tap)
    assert f"master {bridge}" in link and "UP" in link
    assert f"{attachment.mac},{attachment.ip}" in tapbridge.dhcp.hostsfile.read_text()
    assert tapbridge.dhcp.running() is not None
    assert attachment.tap in run_in(ns, "nft", "list", "ruleset")


def test_together_runs_its_steps_at_the_same_time() -> None:
    """Each step waits for the other: run one after the other, they would time out."""
    barrier = threading.Barrier(3, timeout=5)
    together(barrier.wait, barrier.wait, barrier.wait)


def test_together_raises_the_first_error_once_every_step_is_done() -> None:
    done = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        done.set()

    def fails(message: str) -> None:
        raise ValueError(message)

    with pytest.raises(ValueError, match="first"):
        together(slow, partial(fails, "first"), partial(fails, "second"))
    assert done.is_set()


def test_netlink_in_a_namespace_sees_that_namespace_only(netns: str) -> None:
    """The socket is made by a thread that enters the namespace: what it lists and makes is
    there, and the caller stays where it was."""
    run_in(netns, "ip", "link", "add", "mdummy0", "type", "bridge")
    before = links.link_names(None)
    inside = links.link_names(netns)
    assert "mdummy0" in inside and "mdummy0" not in before
    assert set(inside) == set(run_in(netns, "ls", "/sys/class/net").split())
    assert links.remove_link(netns, "mdummy0")
    assert links.link_names(None) == before  # nothing came or went on the host


def test_netlink_in_a_missing_namespace_says_so() -> None:
    with pytest.raises(BackendUnavailable, match="does not exist"):
        links.link_names("meda-no-such-namespace")


def test_a_tap_is_made_in_the_namespace_on_its_bridge_never_on_the_host(netns: str) -> None:
    """The tap's ioctl runs in a thread that entered the namespace: made anywhere else,
    the tap would be on the host, and not found on the bridge."""
    run_in(netns, "ip", "link", "add", "mbrtest0", "type", "bridge")
    try:
        links.add_tap(netns, "mtaptest0", "mbrtest0")
        assert "mtaptest0" not in os.listdir("/sys/class/net")
        shown = run_in(netns, "ip", "-d", "-o", "link", "show", "mtaptest0")
        assert "master mbrtest0" in shown and "tun type tap" in shown and "persist on" in shown
        links.add_tap(netns, "mtaptest0", "mbrtest0")  # a stale one is replaced
    finally:
        links.remove_link(netns, "mtaptest0")
        links.remove_link(netns, "mbrtest0")
