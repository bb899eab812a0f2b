"""Bridge and tap devices through netlink (pyroute2), in meda's network namespace."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError

from meda_core.plugin import namespaces

CLONE_NEWNET = 0x40000000
TUN_DEVICE = "/dev/net/tun"
TUNSETIFF, TUNSETPERSIST, IFF_TAP = 0x400454CA, 0x400454CB, 0x0002
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


@contextmanager
def netlink(netns: str | None) -> Iterator[Any]:
    """An IPRoute in ``netns`` (checked to exist first: pyroute2 would create it)."""
    if netns is None:
        sock = None
        ipr = IPRoute()
    else:
        sock = in_namespace(netns, _netlink_socket)
        ipr = IPRoute(use_socket=sock)
    try:
        yield ipr
    finally:
        ipr.close()
        if sock is not None:
            sock.close()


def in_namespace(netns: str | None, make: Callable[[], T]) -> T:
    """``make()``, run in ``netns``: by a thread that enters it and then ends, since what
    it makes (a socket, a tap) stays in the namespace it was made in. pyroute2's NetNS
    forks a process for it, ten times slower, and a VM's start waits on it."""
    if netns is None:
        return make()
    namespaces.exec_prefix(netns)  # raises if the namespace is missing
    path = namespaces.namespace_path(netns)
    made: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with open(path) as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"cannot enter {path}: {os.strerror(code)}")
            made.append(make())  # never reached outside the namespace
        except BaseException as exc:  # raised in the caller's thread below
            failed.append(exc)

    thread = threading.Thread(target=run, name=f"in-{netns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


def _make_tap(name: str) -> None:
    """A persistent tap in this thread's namespace, as ``ip tuntap add mode tap`` makes it."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


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
            _add_tap(ipr, netns, tap, name)
    return made


def add_tap(netns: str | None, name: str, bridge: str) -> None:
    """A persistent tap on ``bridge``, replacing any stale one of the same name."""
    with netlink(netns) as ipr:
        _add_tap(ipr, netns, name, bridge)


def _add_tap(ipr: Any, netns: str | None, name: str, bridge: str) -> None:
    if _index(ipr, name) is not None:
        ipr.link("del", index=_index(ipr, name))
    in_namespace(netns, partial(_make_tap, name))
    ipr.link("set", index=_index(ipr, name), master=_index(ipr, bridge), state="up")


def remove_link(netns: str | None, name: str) -> bool:
    """Delete a link if it exists; True if it did. A namespace that does not exist (meda
    makes its own at the first start) holds no link to delete."""
    if netns is not None and not namespaces.namespace_path(netns).exists():
        return False
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
