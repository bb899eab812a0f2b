"""The name servers the guests' DNS forwards to: ``MEDA_DNS_SERVERS``, else the host's."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

#: Where the host's name servers are written, in order. systemd-resolved puts a loopback
#: stub (127.0.0.53) in the first and the servers it really asks in the second.
RESOLV_CONFS = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))


def nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, unusable entries left out."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(str(ipaddress.ip_address(fields[1].split("%")[0])))
            except ValueError:
                continue
    return found


def _reachable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (address.is_loopback or address.is_link_local)


def host_servers(files: Sequence[Path] = RESOLV_CONFS) -> list[str]:
    """The host's name servers that a forwarder elsewhere can ask: loopback ones (a local
    stub) and link-local ones (tied to a host interface) are no use from meda's namespace,
    so the next file is tried."""
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        usable = [s for s in nameservers(text) if _reachable(ipaddress.ip_address(s))]
        if usable:
            return usable
    return []


def upstream_servers(configured: list[str], files: Sequence[Path] = RESOLV_CONFS) -> list[str]:
    """``configured`` when given (MEDA_DNS_SERVERS), else the host's."""
    return configured or host_servers(files)
