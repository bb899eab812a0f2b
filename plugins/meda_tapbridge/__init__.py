"""meda's tap-bridge network plugin: bridge + taps (netlink), dnsmasq DHCP, nftables NAT."""

from __future__ import annotations

from meda_core.plugin import BackendRegistry, hookimpl
from meda_tapbridge.backend import TapBridgeNetwork

__all__ = ["TapBridgeNetwork"]


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(TapBridgeNetwork)
