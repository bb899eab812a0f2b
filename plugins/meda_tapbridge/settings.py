"""The tap-bridge plugin's settings (``MEDA_BRIDGE``, ``MEDA_SUBNET``, ...)."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def settings_problem() -> str | None:
    """What is wrong with the MEDA_BRIDGE/SUBNET/GATEWAY settings, or None."""
    try:
        BridgeSettings()
    except ValidationError as exc:
        return "; ".join(
            f"MEDA_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
    return None


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDA_", extra="ignore")

    bridge: str = Field("meda0", pattern=r"^[a-zA-Z0-9_-]{1,15}$")
    subnet: str = "192.168.100.0/24"
    #: The gateway (the bridge's address); the subnet's first host when unset.
    gateway: str | None = None
    #: Whether guests on the bridge may reach each other (they are isolated by default).
    guest_to_guest: bool = False
    #: Comma-separated name servers the guests' DNS (dnsmasq on the gateway) asks; empty:
    #: the host's own (see :mod:`meda_tapbridge.dns`).
    dns_servers: str = ""
    #: In MEDA_NETNS mode, give that namespace a way out through meda's own namespace.
    netns_uplink: bool = True
    #: The link between the two ends of that uplink (meda's end takes the first address).
    netns_uplink_subnet: str = "10.213.255.0/30"
    #: Interfaces of meda's own namespace the uplink may lead out of besides those of its
    #: default routes (comma-separated names).
    netns_uplink_interfaces: str = ""
    #: Comma-separated IPv4 networks no guest may reach through the host: clouds'
    #: metadata services (link-local, Alibaba's, Azure's WireServer).
    blocked_destinations: str = "169.254.0.0/16,100.100.100.200/32,168.63.129.16/32"

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        network = ipaddress.IPv4Network(value, strict=True)
        if network.prefixlen > 29:
            raise ValueError("the subnet needs room for a gateway and guests (/29 or larger)")
        return str(network)

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers(cls, value: str) -> str:
        for server in filter(None, (s.strip() for s in value.split(","))):
            ipaddress.ip_address(server)  # an address, nothing dnsmasq would read as more
        return value

    @field_validator("blocked_destinations")
    @classmethod
    def _blocked(cls, value: str) -> str:
        for network in filter(None, (n.strip() for n in value.split(","))):
            ipaddress.IPv4Network(network, strict=True)  # IPv6 never leaves the bridge
        return value

    @field_validator("netns_uplink_interfaces")
    @classmethod
    def _interfaces(cls, value: str) -> str:
        for name in filter(None, (n.strip() for n in value.split(","))):
            if not re.fullmatch(r"[a-zA-Z0-9_.@-]{1,15}", name):
                raise ValueError(f"{name!r} is not an interface name")
        return value

    @field_validator("netns_uplink_subnet")
    @classmethod
    def _uplink_subnet(cls, value: str) -> str:
        network = ipaddress.IPv4Network(value, strict=True)
        if network.num_addresses < 4:
            raise ValueError("the uplink needs two host addresses (/30 or larger)")
        return str(network)

    @model_validator(mode="after")
    def _gateway_in_subnet(self) -> BridgeSettings:
        if self.gateway is not None and ipaddress.IPv4Address(self.gateway) not in self.network:
            raise ValueError(f"gateway {self.gateway} is not in subnet {self.subnet}")
        if self.uplink_network.overlaps(self.network):
            raise ValueError(
                f"netns_uplink_subnet {self.netns_uplink_subnet} overlaps subnet {self.subnet}"
            )
        return self

    @property
    def uplink_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.netns_uplink_subnet)

    @property
    def blocked_networks(self) -> list[str]:
        return [n.strip() for n in self.blocked_destinations.split(",") if n.strip()]

    @property
    def uplink_interfaces(self) -> list[str]:
        return [n.strip() for n in self.netns_uplink_interfaces.split(",") if n.strip()]

    @property
    def configured_dns_servers(self) -> list[str]:
        return [s.strip() for s in self.dns_servers.split(",") if s.strip()]

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway_ip(self) -> str:
        return self.gateway or str(next(self.network.hosts()))

    def guest_addresses(self) -> list[str]:
        """Addresses guests may lease, lowest first."""
        return [str(ip) for ip in self.network.hosts() if str(ip) != self.gateway_ip]

    def tap_name(self, ip: str) -> str:
        """A tap's name from its guest's address: unique on the network, at most 15 chars."""
        offset = int(ipaddress.IPv4Address(ip)) - int(self.network.network_address)
        return f"mtap{offset}"
