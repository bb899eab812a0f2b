"""Bridge and tap devices through netlink (pyroute2), in meda's network namespace."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

from meda_core.plugin import namespaces


@contextmanager
def netlink(netns: str | None) -> Iterator[Any]:
    """An IPRoute in ``netns`` (checked to exist first: pyroute2 would create it)."""
    if netns is not None:
        namespaces.exec_prefix(netns)  # raises if the namespace is missing
    ipr = NetNS(netns, flags=0) if netns is not None else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_names(netns: str | None) -> list[str]:
    with netlink(netns) as ipr:
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]


def ensure_bridge(
    netns: str | None, name: str, address: str, prefixlen: int, tap: str | None = None
) -> bool:
    """The bridge with its address, up; and ``lo`` up (a new namespace has it down); with
    ``tap``, that tap on it too, in the same netlink session (opening one in a namespace
    costs a process). True if the bridge was made just now."""
    with netlink(netns) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        index = _index(ipr, name)
        made = index is None
        if made:
            ipr.link("add", ifname=name, kind="bridge")
            index = _index(ipr, name)
        addresses = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
        if address not in addresses:
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        if tap is not None:
            _add_tap(ipr, tap, name)
    return made


def add_tap(netns: str | None, name: str, bridge: str) -> None:
    """A persistent tap on ``bridge``, replacing any stale one of the same name."""
    with netlink(netns) as ipr:
        _add_tap(ipr, name, bridge)


def _add_tap(ipr: Any, name: str, bridge: str) -> None:
    if _index(ipr, name) is not None:
        ipr.link("del", index=_index(ipr, name))
    ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    ipr.link("set", index=_index(ipr, name), master=_index(ipr, bridge), state="up")


def remove_link(netns: str | None, name: str) -> bool:
    """Delete a link if it exists; True if it did."""
    with netlink(netns) as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # gone meanwhile (a veth whose peer went)
                raise
            return False
        return True


def create_namespace(name: str) -> None:
    namespaces.namespace_path(name)  # validates the name
    pyroute2_netns.create(name)


def remove_namespace(name: str) -> None:
    namespaces.namespace_path(name)
    pyroute2_netns.remove(name)
