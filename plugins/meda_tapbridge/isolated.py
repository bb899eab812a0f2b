"""A VM in its own network namespace, with NAT in front of a fixed guest address.

Templates and their clones run this way (the Firecracker "network for clones" pattern):
every clone restores the template's memory, so its guest keeps the template's address and
MAC. Inside the VM's namespace the guest always sees ``10.213.0.2/30`` behind ``tap0``
(gateway ``10.213.0.1``, served by a dnsmasq there); the namespace joins meda's bridge
through a veth pair whose inner end holds the VM's own leased address. Traffic to that
address is DNATed to the guest, the guest's traffic SNATed to it, so each clone is a
distinct, reachable machine while the guests stay byte-for-byte the same. The uplink
carries the lease's MAC, so meda's bridge rules hold it to its lease like any tap; and the
guest reaches nothing in its namespace but the DHCP server there. DNS at the guest's
gateway is DNATed to the bridge's gateway, whose dnsmasq answers it as for any guest.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from meda_core.plugin import namespaces as netns
from meda_core.plugin import processes as procs
from meda_tapbridge import links, nft

GUEST_IP = "10.213.0.2"
GATEWAY_IP = "10.213.0.1"
GUEST_PREFIX = 30
GATEWAY_MAC = "02:6d:65:64:61:01"
TAP = "tap0"
UPLINK = "eth0"
TABLE = "meda-vm"


def _rules(address: str, dns: str) -> str:
    # inet: the guest's IPv6 (link-local on tap0) is kept off the namespace as well.
    return f"""
table inet {TABLE} {{
    chain guard {{
        type filter hook prerouting priority raw; policy accept;
        iifname "{TAP}" ip daddr 127.0.0.0/8 drop
        iifname "{TAP}" ip saddr != {{ 0.0.0.0, {GUEST_IP} }} drop
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{UPLINK}" ip daddr {address} dnat ip to {GUEST_IP}
        iifname "{TAP}" ip daddr {GATEWAY_IP} udp dport 53 dnat ip to {dns}
        iifname "{TAP}" ip daddr {GATEWAY_IP} tcp dport 53 dnat ip to {dns}
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{TAP}" ct state established,related accept
        iifname "{TAP}" udp sport 68 udp dport 67 limit rate {nft.DHCP_RATE} accept
        iifname "{TAP}" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{UPLINK}" ip saddr {GUEST_IP} snat ip to {address}
    }}
}}
"""


def setup(
    meda_ns: str | None,
    vm_ns: str,
    veth: str,
    bridge: str,
    mac: str,
    address: str,
    prefix: int,
    gateway: str,
    state_dir: Path,
) -> None:
    """Make ``vm_ns`` with the guest's tap, DHCP and NAT, joined to ``bridge`` by ``veth``
    (its inner end has the lease's ``mac`` and ``address``)."""
    teardown(meda_ns, vm_ns, veth, state_dir)  # a stale one from a crash: start afresh
    subprocess.run(["ip", "netns", "add", vm_ns], check=True, capture_output=True)
    netns.run(
        meda_ns, ["ip", "link", "add", veth, "type", "veth", "peer", "name", UPLINK, "netns", vm_ns]
    )
    netns.run(meda_ns, ["ip", "link", "set", veth, "master", bridge, "up"])
    script = [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "set", UPLINK, "address", mac],
        ["ip", "addr", "add", f"{address}/{prefix}", "dev", UPLINK],
        ["ip", "link", "set", UPLINK, "up"],
        ["ip", "route", "add", "default", "via", gateway],
        ["ip", "tuntap", "add", TAP, "mode", "tap"],
        # One MAC for every VM's gateway: a clone's guest remembers the template's.
        ["ip", "link", "set", TAP, "address", GATEWAY_MAC],
        ["ip", "addr", "add", f"{GATEWAY_IP}/{GUEST_PREFIX}", "dev", TAP],
        ["ip", "link", "set", TAP, "up"],
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
    ]
    for argv in script:
        netns.run(vm_ns, argv)
    netns.run(vm_ns, ["nft", "-f", "-"], stdin=_rules(address, gateway))
    _start_dhcp(vm_ns, state_dir)


def _start_dhcp(vm_ns: str, state_dir: Path) -> None:
    """The namespace's dnsmasq: DHCP only, on the guest's tap (a DNS query to the gateway
    is DNATed past it)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    netns.run(
        vm_ns,
        [
            "dnsmasq",
            "--conf-file=/dev/null",
            f"--pid-file={state_dir / 'dnsmasq.pid'}",
            f"--interface={TAP}",
            "--bind-interfaces",
            "--except-interface=lo",
            "--port=0",
            f"--dhcp-range={GUEST_IP},{GUEST_IP},255.255.255.252,12h",
            f"--dhcp-option=option:router,{GATEWAY_IP}",
            f"--dhcp-option=option:dns-server,{GATEWAY_IP}",
            "--dhcp-authoritative",
            f"--dhcp-leasefile={state_dir / 'dnsmasq.leases'}",
            "--user=root",
            "--group=root",
            "--quiet-dhcp",
        ],
    )


def _stop_dhcp(state_dir: Path) -> None:
    pidfile = state_dir / "dnsmasq.pid"
    try:
        runtime = procs.identify(int(pidfile.read_text().strip()))
    except (OSError, ValueError):
        runtime = None
    if runtime is not None and str(pidfile) in Path(f"/proc/{runtime.pid}/cmdline").read_text():
        os.kill(runtime.pid, signal.SIGTERM)
        procs.wait_gone(runtime, 5)
    for name in ("dnsmasq.pid", "dnsmasq.leases"):
        (state_dir / name).unlink(missing_ok=True)


def refresh(
    meda_ns: str | None, vm_ns: str, bridge: str, mac: str, address: str, gateway: str
) -> None:
    """Bring a VM namespace made by an older meda up to today's guard: its uplink takes the
    lease's MAC (the bridge admits nothing else from it) and its table is replaced whole."""
    netns.run(vm_ns, ["ip", "link", "set", UPLINK, "address", mac])
    replace = f"table inet {TABLE}\ndelete table inet {TABLE}\n" + _rules(address, gateway)
    netns.run(vm_ns, ["nft", "-f", "-"], stdin=replace)
    # The host's neighbour entry still names the old MAC: let it learn the new one now.
    netns.run(meda_ns, ["ip", "neigh", "flush", "to", address, "dev", bridge])


def teardown(meda_ns: str | None, vm_ns: str, veth: str, state_dir: Path) -> None:
    """Stop the namespace's dnsmasq and delete the namespace (its links go with it)."""
    _stop_dhcp(state_dir)
    if netns.namespace_path(vm_ns).exists():
        subprocess.run(["ip", "netns", "delete", vm_ns], check=True, capture_output=True)
    if veth:
        links.remove_link(meda_ns, veth)  # normally gone with its peer already
    if state_dir.exists() and not any(state_dir.iterdir()):
        state_dir.rmdir()
