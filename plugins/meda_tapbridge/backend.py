"""The ``tap-bridge`` network backend: a Linux bridge, a tap per VM, dnsmasq and nftables."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import ClassVar

from meda_core.plugin import (
    Availability,
    Capability,
    ForwardListener,
    GuestAddressing,
    Lease,
    MedaError,
    NetworkAttachment,
    NetworkBackend,
    NicKind,
    NicSpec,
    PortForward,
    VMState,
    exclusive,
    random_mac,
)
from meda_core.plugin import namespaces as netns
from meda_tapbridge import dns, isolated, links, nft, uplink
from meda_tapbridge.dhcp import DhcpServer
from meda_tapbridge.proxies import Proxies, ProxySpec
from meda_tapbridge.settings import BridgeSettings, settings_problem
from meda_tapbridge.together import together

NAMESPACE_PREFIX = "meda-vm-"
REQUIRED_TOOLS = {"nft": "nftables", "dnsmasq": "dnsmasq-base", "nsenter": "util-linux"}
EVERY_ADDRESS = "0.0.0.0"

#: A VM in these states has its NIC plugged: its tap and namespace are not orphans.
HOLDS_A_NIC = (VMState.RUNNING, VMState.STARTING, VMState.STOPPING, VMState.SNAPSHOTTING)

#: An orphan: what it is, in words, and how to remove it.
Orphan = tuple[str, Callable[[], object]]

log = logging.getLogger(__name__)


def vm_namespace_prefix(home: Path) -> str:
    """How the VM namespaces of the meda at ``home`` begin (names are host-wide)."""
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:8]
    return f"{NAMESPACE_PREFIX}{digest}-"


class TapBridgeNetwork(NetworkBackend):
    name = "tap-bridge"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DHCP, Capability.NAT, Capability.PORT_FORWARD, Capability.ISOLATED}
    )
    priority = 10

    @property
    def config(self) -> BridgeSettings:
        return BridgeSettings()

    @property
    def ns(self) -> str | None:
        return self.context.settings.netns

    @property
    def state_dir(self) -> Path:
        return self.context.settings.home / "net" / self.config.bridge

    @property
    def dhcp(self) -> DhcpServer:
        return DhcpServer(self.state_dir, self.ns, self.config.bridge)

    # ---- availability ----

    def check_available(self) -> Availability:
        problem = settings_problem()
        if problem:
            return Availability.no(f"bad settings: {problem}")
        if os.geteuid() != 0:
            return Availability.no("needs root (bridges, taps and nftables rules)")
        if not os.path.exists("/dev/net/tun"):
            return Availability.no("/dev/net/tun is missing (no TUN/TAP support)")
        for tool, package in REQUIRED_TOOLS.items():
            if shutil.which(tool) is None:
                return Availability.no(f"'{tool}' not found (apt-get install {package})")
        if (
            self.ns is not None
            and not netns.namespace_path(self.ns).exists()
            and not self.context.settings.netns_create
        ):
            return Availability.no(
                f"network namespace '{self.ns}' (MEDA_NETNS) does not exist "
                "(MEDA_NETNS_CREATE=1 has meda make it)"
            )
        return Availability.yes()

    # ---- addresses ----

    def allocate(self, vm: str, isolated: bool = False) -> NetworkAttachment:
        config = self.config
        lease = self.context.leases.allocate(
            config.bridge, vm, config.guest_addresses(), random_mac
        )
        number = config.tap_name(lease.ip).removeprefix("mtap")
        return NetworkAttachment(
            mac=lease.mac,
            ip=lease.ip,
            tap=f"mveth{number}" if isolated else config.tap_name(lease.ip),
            subnet=config.subnet,
            gateway=config.gateway_ip,
            netns=self._vm_namespace(number) if isolated else None,
        )

    def _vm_namespace(self, number: str) -> str:
        return vm_namespace_prefix(self.context.settings.home) + number

    def release(self, vm: str) -> None:
        config = self.config
        with self._locked():
            lease = self.context.leases.find(config.bridge, vm)
            if lease is not None:
                links.remove_link(self.ns, config.tap_name(lease.ip))
            self.context.leases.release(config.bridge, vm)
            self._sync_proxies()
            leases = self.context.leases.all(config.bridge)
            if leases:
                self.dhcp.refresh(leases)
                self._sync_rules()
            else:
                self._teardown()

    # ---- NICs ----

    def plug(self, vm: str, attachment: NetworkAttachment) -> NicSpec:
        assert attachment.tap is not None
        with self._locked():
            if attachment.netns is None:
                self._ensure_network(tap=attachment.tap)
                return self.nic(attachment)
            self._ensure_network()
        assert attachment.ip is not None and attachment.gateway is not None
        config = self.config
        isolated.setup(
            self.ns,
            attachment.netns,
            attachment.tap,
            config.bridge,
            attachment.mac,
            attachment.ip,
            config.network.prefixlen,
            attachment.gateway,
            self._vm_state_dir(attachment.netns),
        )
        return self.nic(attachment)

    def nic(self, attachment: NetworkAttachment) -> NicSpec:
        # In a VM's own namespace its tap has the one fixed name (the veth pair carries it out).
        tap = isolated.TAP if attachment.netns is not None else attachment.tap
        return NicSpec(kind=NicKind.TAP, mac=attachment.mac, tap=tap, netns=attachment.netns)

    def guest_addressing(self, attachment: NetworkAttachment) -> GuestAddressing:
        """The leased address, static, on the bridge; DHCP in a VM's own namespace, where
        the guest's address is not the one leased (NAT is in front of it)."""
        ip, subnet, gateway = attachment.ip, attachment.subnet, attachment.gateway
        if attachment.netns is not None or not (ip and subnet and gateway):
            return GuestAddressing.dhcp()
        address = f"{ip}/{subnet.split('/')[1]}"
        return GuestAddressing.static(address, gateway, nameservers=(gateway,))  # dnsmasq

    def unplug(self, vm: str, attachment: NetworkAttachment) -> None:
        if attachment.netns is not None and attachment.tap is not None:
            state_dir = self._vm_state_dir(attachment.netns)
            isolated.teardown(self.ns, attachment.netns, attachment.tap, state_dir)
        elif attachment.tap is not None:
            links.remove_link(self.ns, attachment.tap)

    def _vm_state_dir(self, vm_ns: str) -> Path:
        return self.state_dir / "vms" / vm_ns

    # ---- forwards ----
    # A forward is a DNAT rule in meda's namespace (every local address there, or
    # MEDA_FORWARD_ADDRESS when that namespace is the host's). With MEDA_NETNS, a proxy
    # also answers in the namespace meda runs in (proxies.py), on MEDA_FORWARD_ADDRESS.

    @property
    def proxies(self) -> Proxies:
        return Proxies(self.context.settings.home / "net" / "proxies", self.ns)

    @property
    def _forward_address(self) -> str:
        return str(self.context.settings.forward_address)

    def check_host_port(self, forward: PortForward) -> str | None:
        port, protocol = forward.host_port, forward.protocol.value
        problem = netns.port_problem(self.ns, port, protocol)
        if self.ns is None:
            return problem
        if problem is not None:
            return f"{problem} (in {self.ns})"
        problem = netns.port_problem(None, port, protocol, self._forward_address)
        return problem and f"{problem} (on {self._forward_address} in meda's own namespace)"

    def forward_listeners(self, forward: PortForward) -> list[ForwardListener]:
        port = forward.host_port
        if self.ns is None:
            return [
                ForwardListener(
                    address=f"{self._forward_address}:{port}", netns=None, by="nftables"
                )
            ]
        return [
            ForwardListener(address=f"{self._forward_address}:{port}", netns=None, by="proxy"),
            ForwardListener(address=f"{EVERY_ADDRESS}:{port}", netns=self.ns, by="nftables"),
        ]

    def apply_forwards(self) -> None:
        with self._locked():
            if self.context.leases.all(self.config.bridge):
                self._sync_rules()
            self._sync_proxies()

    def _wanted_proxies(self) -> list[ProxySpec]:
        if self.ns is None:
            return []
        ips = {lease.vm: lease.ip for lease in self.context.leases.all(self.config.bridge)}
        address, allow_local = self._forward_address, self.config.guest_to_guest
        return [
            ProxySpec(
                protocol=f.protocol.value,
                host_port=f.host_port,
                address=address,
                target=f"{ips[vm]}:{f.guest_port}",
                allow_local=allow_local,
            )
            for vm, f in self.context.vms.forwards()
            if vm in ips
        ]

    def _sync_proxies(self) -> None:
        self.proxies.sync(self._wanted_proxies())

    def restore(self) -> None:
        with self._locked():
            leases = self.context.leases.all(self.config.bridge)
            if leases:
                self._ensure_network()
            by_vm = {lease.vm: lease for lease in leases}
            for vm in self.context.vms.list_vms():
                lease = by_vm.get(vm.name)
                if vm.netns and lease and Path("/run/netns", vm.netns).exists():
                    isolated.refresh(
                        self.ns,
                        vm.netns,
                        self.config.bridge,
                        lease.mac,
                        lease.ip,
                        self.config.gateway_ip,
                    )
            try:
                self._sync_proxies()
            except MedaError as exc:  # the server still starts; the forward says why later
                log.warning("a port forward cannot answer in meda's namespace: %s", exc.message)

    # ---- cleanup ----

    def orphans(self) -> list[str]:
        return [description for description, _ in self._find_orphans()]

    def remove_orphans(self) -> list[str]:
        with self._locked():
            found = self._find_orphans()
            for _, remove in found:
                remove()
            leases = self.context.leases.all(self.config.bridge)
            if leases:
                self.dhcp.refresh(leases)
            else:
                self._teardown()
        return [description for description, _ in found]

    def _find_orphans(self) -> list[Orphan]:
        config, leases = self.config, self.context.leases
        vms = {vm.name: vm for vm in self.context.vms.list_vms()}
        live_taps = {vm.tap_device for vm in vms.values() if vm.state in HOLDS_A_NIC}
        found = self._orphan_leases(vms)
        found += self._orphan_links(live_taps)
        found += self.proxies.orphans(self._wanted_proxies())
        found += self._orphan_namespaces(
            {vm.netns for vm in vms.values() if vm.tap_device in live_taps}
        )
        if not any(lease.vm in vms for lease in leases.all(config.bridge)):
            found += self._orphan_shared_network()
        return found

    def _orphan_leases(self, vms: Mapping[str, object]) -> list[Orphan]:
        config, leases = self.config, self.context.leases
        return [
            (
                f"lease {lease.ip} of missing VM '{lease.vm}'",
                partial(leases.release, config.bridge, lease.vm),
            )
            for lease in leases.all(config.bridge)
            if lease.vm not in vms
        ]

    def _orphan_links(self, live_taps: set[str | None]) -> list[Orphan]:
        return [
            (f"link {link}", partial(links.remove_link, self.ns, link))
            for link in links.link_names(self.ns)
            if link.startswith(("mtap", "mveth")) and link not in live_taps
        ]

    def _orphan_namespaces(self, live_namespaces: set[str | None]) -> list[Orphan]:
        mine = self._vm_namespace("")
        return [
            (
                f"network namespace {path.name}",
                partial(isolated.teardown, self.ns, path.name, "", self._vm_state_dir(path.name)),
            )
            for path in sorted(Path("/run/netns").glob(f"{mine}*"))
            if path.name not in live_namespaces
        ]

    def _orphan_shared_network(self) -> list[Orphan]:
        """The bridge, DHCP server, rules and uplink, once no stored VM holds a lease."""
        config = self.config
        found: list[Orphan] = []
        if self.dhcp.running() is not None:
            found.append((f"dnsmasq for {config.bridge}", self.dhcp.stop))
        if nft.exists(self.ns):
            found.append((f"nftables tables {nft.TABLE}", lambda: nft.replace(self.ns, None)))
        if config.bridge in links.link_names(self.ns):
            found.append(
                (f"bridge {config.bridge}", lambda: links.remove_link(self.ns, config.bridge))
            )
        if self.ns is not None and (described := uplink.present(self.ns)):
            found.append((", ".join(described), partial(uplink.remove, self.ns)))
        return found

    # ---- the shared network: bridge, sysctls, DHCP, rules ----

    def _locked(self) -> AbstractContextManager[None]:
        """One process at a time changes the shared network (threads and processes alike)."""
        return exclusive(self.context.settings.home / "net" / ".lock")

    @property
    def _made_namespace(self) -> Path:
        return self.context.settings.home / "net" / f"{self.config.bridge}.made-netns"

    def _ensure_namespace(self) -> None:
        """Make MEDA_NETNS when told to; remember that meda made it, to delete it later."""
        if self.ns is None or netns.namespace_path(self.ns).exists():
            return
        if not self.context.settings.netns_create:
            return  # exec_prefix will say that it is missing
        links.create_namespace(self.ns)
        self._made_namespace.write_text(self.ns)

    def _ensure_network(self, tap: str | None = None) -> None:
        """The bridge (with ``tap`` on it), sysctls, DHCP and rules, as the leases say.

        A VM waits on this at each start, so the independent steps overlap: the rules
        (matched by interface name) are loaded while the bridge and tap are made, then
        the sysctls and dnsmasq, which need the bridge, go together. What they read from
        meda's state is read here, in the calling thread.
        """
        self._ensure_namespace()
        config = self.config
        uplink_wanted = self.ns is not None and config.netns_uplink
        if uplink_wanted:
            assert self.ns is not None
            uplink.ensure(
                self.ns, config.uplink_network, config.blocked_networks, config.uplink_interfaces
            )
        leases = self.context.leases.all(config.bridge)
        ruleset = self._ruleset(config, leases)
        servers = dns.upstream_servers(config.configured_dns_servers)

        def bridge_then_services() -> None:
            made = links.ensure_bridge(
                self.ns, config.bridge, config.gateway_ip, config.network.prefixlen, tap
            )
            steps: list[Callable[[], object]] = [
                partial(self._set_sysctls, config),
                partial(self._sync_dhcp, leases, servers),
            ]
            if made and self.ns is not None and not uplink_wanted:
                steps.append(self._say_if_no_route_out)  # once, as the network comes up
            together(*steps)

        together(bridge_then_services, partial(nft.replace, self.ns, ruleset))

    def _say_if_no_route_out(self) -> None:
        if not netns.run(self.ns, ["ip", "route", "show", "default"]):
            log.warning(
                "MEDA_NETNS %s has no route out (MEDA_NETNS_UPLINK=0): its guests get no "
                "answers from DNS and reach nothing beyond the host",
                self.ns,
            )

    def _set_sysctls(self, config: BridgeSettings) -> None:
        # Forwards reached from 127.0.0.1 are routed out of the bridge: allow it there only.
        localnet = f"net.ipv4.conf.{config.bridge}.route_localnet=1"
        netns.run(self.ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", localnet])

    def _sync_dhcp(self, leases: list[Lease], servers: list[str]) -> None:
        config = self.config
        self.dhcp.ensure(
            leases,
            config.gateway_ip,
            str(config.network.netmask),
            str(config.network.network_address),
            servers,
        )

    def _sync_rules(self) -> None:
        config = self.config
        nft.replace(self.ns, self._ruleset(config, self.context.leases.all(config.bridge)))

    def _ruleset(self, config: BridgeSettings, leases: list[Lease]) -> str:
        """nftables rules for ``leases``: their ports and their VMs' forwards."""
        ips = {lease.vm: lease.ip for lease in leases}
        forwards = [
            (ips[vm], f.host_port, f.guest_port, f.protocol.value)
            for vm, f in self.context.vms.forwards()
            if vm in ips
        ]
        # A lease's port is its VM's tap, or the veth when the VM has its own namespace.
        ports = [
            nft.Port(name, lease.mac, lease.ip)
            for lease in leases
            for tap in [config.tap_name(lease.ip)]
            for name in (tap, tap.replace("mtap", "mveth"))
        ]
        address = None if self.ns is not None else self._forward_address
        return nft.render(
            config.subnet,
            config.bridge,
            forwards,
            ports,
            config.guest_to_guest,
            config.gateway_ip,
            forward_address=None if address == EVERY_ADDRESS else address,
            blocked=config.blocked_networks,
        )

    def _teardown(self) -> None:
        """Remove everything the network had: DHCP, rules, bridge, uplink, files."""
        if self.ns is not None:
            uplink.remove(self.ns)  # there even when the namespace went (its table)
        if self.ns is not None and not netns.namespace_path(self.ns).exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
            return
        self.dhcp.stop()
        nft.replace(self.ns, None)
        links.remove_link(self.ns, self.config.bridge)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if self.ns is not None and self._made_namespace.exists():
            links.remove_namespace(self.ns)
            self._made_namespace.unlink()
