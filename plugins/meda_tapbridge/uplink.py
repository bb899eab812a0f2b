"""MEDA_NETNS's way out: a veth pair to meda's own namespace, routed and masqueraded there.

Inside MEDA_NETNS the link is :data:`INNER` with the uplink subnet's second address and
the namespace's default route (unless it has one of its own); in meda's namespace the
other end takes the first address, and a table of meda's masquerades what comes from the
link, lets it out only by the interfaces of that namespace's default routes (not into
networks it is directly on) and keeps it off that namespace's own services (IPv4 and
IPv6 alike) and off the blocked destinations. Both ends go
with the link, the table with :func:`remove`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Sequence

from meda_core.plugin import namespaces as netns
from meda_tapbridge import links, nft

INNER = "meda-uplink"
log = logging.getLogger(__name__)


def _digest(ns: str) -> str:
    return hashlib.sha256(ns.encode()).hexdigest()[:8]


def outer_name(ns: str) -> str:
    """meda's end of the link (names are per namespace, and MEDA_NETNS names are host-wide)."""
    return f"mup{_digest(ns)}"


def table_name(ns: str) -> str:
    return f"{nft.TABLE}-up-{_digest(ns)}"


def way_out(extra: list[str]) -> list[str]:
    """The interfaces of meda's namespace its default routes leave by, and ``extra``."""
    routes = netns.run(None, ["ip", "-o", "route", "show", "default"])
    found = re.findall(r"\bdev (\S+)", routes) + extra
    return sorted(set(found))


def _rules(ns: str, inner_ip: str, blocked: list[str], out: list[str]) -> str:
    outer, table = outer_name(ns), table_name(ns)
    # Only out by the way out: not into networks meda's namespace is on (containers' or
    # other VMs' bridges), which it would route to directly.
    devices = ", ".join(f'"{device}"' for device in out if device != outer)
    only_out = (
        f'iifname "{outer}" oifname != {{ {devices} }} drop'
        if devices
        else (f'iifname "{outer}" drop')
    )
    return f"""
table inet {table} {{
    chain guard {{
        type filter hook prerouting priority raw; policy accept;
        iifname "{outer}" ip saddr != {inner_ip} drop
        iifname "{outer}" meta nfproto ipv6 drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{outer}" ct state established,related accept
        iifname "{outer}" drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        {nft.drop_blocked(f'iifname "{outer}"', blocked)}
        {only_out}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {inner_ip} oifname != "{outer}" masquerade
    }}
}}
"""


def _table(ns: str) -> nft.Tables:
    return (("inet", table_name(ns)),)


def ensure(
    ns: str, subnet: ipaddress.IPv4Network, blocked: Sequence[str] = (), extra: Sequence[str] = ()
) -> None:
    """Link ``ns`` to meda's namespace through ``subnet``, routed and masqueraded out of
    its default routes' interfaces (and ``extra``), never to ``blocked`` (idempotent)."""
    outer = outer_name(ns)
    first, second = (str(ip) for ip in list(subnet.hosts())[:2])
    prefix = subnet.prefixlen
    if outer not in links.link_names(None):
        links.remove_link(ns, INNER)  # a stale end whose peer went
        netns.run(
            None, ["ip", "link", "add", outer, "type", "veth", "peer", "name", INNER, "netns", ns]
        )
    for where, link, address in ((None, outer, first), (ns, INNER, second)):
        netns.run(where, ["ip", "addr", "flush", "dev", link])
        netns.run(where, ["ip", "addr", "add", f"{address}/{prefix}", "dev", link])
        netns.run(where, ["ip", "link", "set", link, "up"])
    default = netns.run(ns, ["ip", "-o", "route", "show", "default"]).strip()
    if not default or f"dev {INNER}" in default:
        netns.run(ns, ["ip", "route", "replace", "default", "via", first, "dev", INNER])
    else:
        log.warning("MEDA_NETNS %s has a default route of its own (%s): it is kept", ns, default)
    # Replies to the masqueraded traffic arrive on the host's own uplink: forwarding must be
    # on for the whole namespace, as in meda's default mode (it is left on, as Docker does).
    netns.set_sysctl(None, "net.ipv4.ip_forward", "1")
    out = way_out(list(extra))
    if not out:
        log.warning("meda's namespace has no default route: MEDA_NETNS %s has no way out", ns)
    nft.replace(None, _rules(ns, second, list(blocked), out), _table(ns))


def present(ns: str) -> list[str]:
    """What of the uplink of ``ns`` exists in meda's namespace, described."""
    found = []
    if outer_name(ns) in links.link_names(None):
        found.append(f"uplink {outer_name(ns)} of network namespace '{ns}'")
    if nft.exists(None, _table(ns)):
        found.append(f"nftables table inet {table_name(ns)}")
    return found


def remove(ns: str) -> None:
    """Remove the link (both ends) and the table, where they are (it changes nothing else)."""
    links.remove_link(None, outer_name(ns))
    if nft.exists(None, _table(ns)):
        nft.replace(None, None, _table(ns))
