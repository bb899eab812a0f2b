"""meda's own nftables table: NAT for the guest subnet and port forwards, all in one place.

The table is rendered whole from the stored forwards and replaced in one ``nft -f``
transaction, so it always matches the state store and nothing is ever left behind.
"""

from __future__ import annotations

from collections.abc import Iterable

from meda_core import netns
from meda_core.errors import BackendError

TABLE = "meda"


def _dnat(forwards: Iterable[tuple[str, int, int, str]]) -> list[str]:
    return [
        f"fib daddr type local {proto} dport {host_port} dnat to {ip}:{guest_port}"
        for ip, host_port, guest_port, proto in forwards
    ]


def render(subnet: str, bridge: str, forwards: list[tuple[str, int, int, str]]) -> str:
    """The table for ``subnet`` behind ``bridge``; ``forwards`` are (ip, host, guest, proto)."""
    dnat = "\n        ".join(_dnat(forwards))
    return f"""
table ip {TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        {dnat}
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        {dnat}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} ip daddr != {subnet} masquerade
        oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade
        oifname "{bridge}" ip saddr {subnet} ct status dnat masquerade
    }}
}}
"""


def replace(ns: str | None, ruleset: str | None) -> None:
    """Replace meda's table with ``ruleset`` atomically, or remove it when None."""
    script = f"table ip {TABLE}\ndelete table ip {TABLE}\n" + (ruleset or "")
    netns.run(ns, ["nft", "-f", "-"], stdin=script)


def exists(ns: str | None) -> bool:
    try:
        netns.run(ns, ["nft", "list", "table", "ip", TABLE])
    except BackendError:
        return False
    return True
