"""meda's own nftables tables: NAT, port forwards and the guards that keep guests in place.

``ip meda`` holds NAT and forwards, and keeps guests off the host: nothing from the bridge
may reach 127.0.0.0/8 (``route_localnet`` is on there, for forwards on 127.0.0.1) nor any
host service but meda's DHCP and DNS (on the gateway; a few TCP connections each), nor
the blocked destinations beyond the host (clouds' metadata services, ``blocked``), and
guests reach each other only if the operator allows it.
``bridge meda`` pins each guest's port to its lease (MAC, IPv4 address, ARP), so no guest
can speak as another. Both are rendered whole from the state store and replaced in one
``nft -f`` transaction, so they always match it and nothing is ever left behind.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from meda_core.plugin import BackendError
from meda_core.plugin import namespaces as netns

#: DHCP a guest port may send the host's dnsmasq (which parses it as root): a guest that
#: floods it with made-up client MACs costs the host no more than this.
DHCP_RATE = "20/second burst 40 packets"
#: DNS queries (UDP packets, TCP connections) a guest may send the gateway's dnsmasq.
DNS_RATE = "100/second burst 200 packets"
#: TCP connections to the gateway's DNS one guest may hold at once (dnsmasq has ~20).
DNS_TCP_PER_GUEST = 4
TABLE = "meda"
FAMILIES = ("ip", "bridge")
#: Bridge ports that carry a guest: a VM's tap, or the veth of a VM in its own namespace.
GUEST_PORTS = '{ "mtap*", "mveth*" }'


class Port(NamedTuple):
    """A guest's bridge port and the only addresses that may come out of it."""

    name: str
    mac: str
    ip: str


def _dnat(forwards: Iterable[tuple[str, int, int, str]], address: str | None) -> list[str]:
    only = f"ip daddr {address} " if address else ""
    return [
        f"fib daddr type local {only}{proto} dport {host_port} dnat to {ip}:{guest_port}"
        for ip, host_port, guest_port, proto in forwards
    ]


def drop_blocked(match: str, blocked: Sequence[str]) -> str:
    """A rule dropping what ``match`` matches towards the ``blocked`` networks."""
    return f"{match} ip daddr {{ {', '.join(blocked)} }} drop" if blocked else ""


def _elements(items: Iterable[str]) -> str:
    listed = ", ".join(items)
    return f"elements = {{ {listed} }}" if listed else ""


def render(
    subnet: str,
    bridge: str,
    forwards: list[tuple[str, int, int, str]],
    ports: Sequence[Port] = (),
    guest_to_guest: bool = False,
    gateway: str | None = None,
    forward_address: str | None = None,
    blocked: Sequence[str] = (),
) -> str:
    """Both tables for ``subnet`` behind ``bridge``; ``forwards`` are (ip, host, guest, proto),
    answered on every local address or only on ``forward_address``; ``gateway`` (the
    bridge's address, by default the subnet's first) serves DNS; no guest reaches the
    ``blocked`` networks (metadata services)."""
    gateway = gateway or str(next(ipaddress.IPv4Network(subnet).hosts()))
    return _render_ip(
        subnet, bridge, gateway, forwards, guest_to_guest, forward_address, blocked
    ) + _render_bridge(ports, guest_to_guest)


def _render_ip(
    subnet: str,
    bridge: str,
    gateway: str,
    forwards: list[tuple[str, int, int, str]],
    guest_to_guest: bool,
    forward_address: str | None,
    blocked: Sequence[str],
) -> str:
    dnat = "\n        ".join(_dnat(forwards, forward_address))
    chains = (
        _chain(
            "guard",
            "type filter hook prerouting priority raw",
            f'iifname "{bridge}" ip daddr 127.0.0.0/8 drop',
            f'iifname "{bridge}" ip saddr 127.0.0.0/8 drop',
        ),
        _chain("prerouting", "type nat hook prerouting priority dstnat", dnat),
        _input_chain(bridge, gateway),
        _forward_chain(bridge, guest_to_guest, blocked),
        _chain("output", "type nat hook output priority -100", dnat),
        _chain(
            "postrouting",
            "type nat hook postrouting priority srcnat",
            f"ip saddr {subnet} ip daddr != {subnet} masquerade",
            f'oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade',
            f'oifname "{bridge}" ip saddr {subnet} ct status dnat masquerade',
        ),
    )
    return f"\ntable ip {TABLE} {{\n{''.join(chains)}}}\n"


def _chain(name: str, hook: str, *rules: str) -> str:
    """A base chain of ``hook`` (policy accept) with ``rules``, one a line."""
    body = "".join(f"        {rule}\n" for rule in rules)
    return f"    chain {name} {{\n        {hook}; policy accept;\n{body}    }}\n"


def _input_chain(bridge: str, gateway: str) -> str:
    """What guests may send the host: DHCP and DNS (rate-limited) at the gateway."""
    guest = f'iifname "{bridge}"'
    # Before "established": a guest's UDP queries from one port would be established.
    dns_limit = f"{{ ip saddr limit rate over {DNS_RATE} }}"
    dns_held = f"{{ ip saddr ct count over {DNS_TCP_PER_GUEST} }}"
    return _chain(
        "input",
        "type filter hook input priority filter",
        f"{guest} udp dport 53 meter dns_queries size 4096 {dns_limit} drop",
        f"{guest} tcp dport 53 ct state new meter dns_conns size 4096 {dns_limit} drop",
        f"{guest} tcp dport 53 ct state new meter dns_held size 4096 {dns_held} drop",
        f"{guest} ct state established,related accept",
        f"{guest} udp sport 68 udp dport 67 accept",
        f"{guest} ip daddr {gateway} udp dport 53 accept",
        f"{guest} ip daddr {gateway} tcp dport 53 accept",
        f"{guest} drop",
    )


def _forward_chain(bridge: str, guest_to_guest: bool, blocked: Sequence[str]) -> str:
    # Guest-to-guest traffic routed through the host (the gateway as next hop, or a forward
    # to another guest) is dropped unless allowed: with br_netfilter loaded the latter is
    # bridged straight across, where the bridge table drops it, so both ways agree.
    routed = "" if guest_to_guest else f'iifname "{bridge}" oifname "{bridge}" drop'
    return _chain(
        "forward",
        "type filter hook forward priority filter",
        drop_blocked(f'iifname "{bridge}"', blocked),
        routed,
    )


def _render_bridge(ports: Sequence[Port], guest_to_guest: bool) -> str:
    macs = _elements(f'"{p.name}" . {p.mac}' for p in ports)
    ips = _elements(f'"{p.name}" . {p.ip}' for p in ports)
    isolation = "" if guest_to_guest else f"iifname {GUEST_PORTS} oifname {GUEST_PORTS} drop"
    return f"""
table bridge {TABLE} {{
    set macs {{
        type ifname . ether_addr
        {macs}
    }}
    set ips {{
        type ifname . ipv4_addr
        {ips}
    }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        iifname {GUEST_PORTS} jump guest
    }}
    chain guest {{
        iifname . ether saddr != @macs drop
        ether type != {{ ip, arp }} drop
        iifname . arp saddr ether != @macs drop
        arp saddr ip 0.0.0.0 accept
        ether type arp iifname . arp saddr ip != @ips drop
        udp dport 67 meter dhcp_flood size 4096 {{ iifname limit rate over {DHCP_RATE} }} drop
        ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept
        ether type ip iifname . ip saddr != @ips drop
        udp sport 67 drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        {isolation}
    }}
}}
"""


#: (family, name) of the tables a ruleset replaces: by default meda's own two.
Tables = Sequence[tuple[str, str]]
MEDA_TABLES: Tables = tuple((family, TABLE) for family in FAMILIES)


def replace(ns: str | None, ruleset: str | None, tables: Tables = MEDA_TABLES) -> None:
    """Replace ``tables`` with ``ruleset`` atomically, or remove them when None."""
    script = "".join(f"table {f} {name}\ndelete table {f} {name}\n" for f, name in tables)
    netns.run(ns, ["nft", "-f", "-"], stdin=script + (ruleset or ""))


def exists(ns: str | None, tables: Tables = MEDA_TABLES) -> bool:
    """Whether any of ``tables`` is there."""
    for family, name in tables:
        try:
            netns.run(ns, ["nft", "list", "table", family, name])
        except BackendError:
            continue
        return True
    return False
