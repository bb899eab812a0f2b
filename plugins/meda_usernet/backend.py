"""The ``user`` network backend: each VM gets its own QEMU user-mode (slirp) network."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import ClassVar

from meda_core.plugin import (
    Availability,
    Capability,
    Conflict,
    ForwardListener,
    NetworkAttachment,
    NetworkBackend,
    NicKind,
    NicSpec,
    PortForward,
)
from meda_core.plugin import namespaces as netns

#: What QEMU's user-mode DHCP server gives the (only) guest on its network.
GUEST_IP = "10.0.2.15"
SUBNET = "10.0.2.0/24"
GATEWAY = "10.0.2.2"


class UserNetwork(NetworkBackend):
    name = "user"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.HOSTFWD, Capability.ROOTLESS}
    )
    priority = 0

    def check_available(self) -> Availability:
        return Availability.yes()

    def allocate(self, vm: str, isolated: bool = False) -> NetworkAttachment:
        # Each VM has a network of its own: its MAC need only be stable, not unique.
        digest = hashlib.sha256(f"{self.context.settings.home}/{vm}".encode()).digest()
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
        return NetworkAttachment(mac=mac, ip=GUEST_IP, subnet=SUBNET, gateway=GATEWAY)

    def release(self, vm: str) -> None:
        pass  # nothing lives on the host outside the VM's own QEMU process

    def plug(self, vm: str, attachment: NetworkAttachment) -> NicSpec:
        return self.nic(attachment)

    def nic(self, attachment: NetworkAttachment) -> NicSpec:
        return NicSpec(kind=NicKind.USER, mac=attachment.mac)

    def guest_endpoint(
        self, vm: str, attachment: NetworkAttachment, forwards: Sequence[PortForward], port: int
    ) -> tuple[str, int]:
        # The guest's address exists only inside its QEMU: it is reached at a forward.
        forward = next((f for f in forwards if f.guest_port == port), None)
        if forward is None:
            raise Conflict(
                f"VM '{vm}' uses user-mode networking: forward a host port to its port {port} "
                f"first (meda port-forward NAME 2222 {port})",
                name=vm,
            )
        return "127.0.0.1", forward.host_port

    def unplug(self, vm: str, attachment: NetworkAttachment) -> None:
        pass

    def check_host_port(self, forward: PortForward) -> str | None:
        return netns.port_problem(
            self.context.settings.netns, forward.host_port, forward.protocol.value
        )

    def forward_listeners(self, forward: PortForward) -> list[ForwardListener]:
        # QEMU's slirp binds every address of the namespace QEMU runs in.
        address = f"0.0.0.0:{forward.host_port}"
        return [ForwardListener(address=address, netns=self.context.settings.netns, by="qemu")]

    def apply_forwards(self) -> None:
        pass  # forwards are hostfwd rules inside each VM's QEMU

    def restore(self) -> None:
        pass

    def orphans(self) -> list[str]:
        return []

    def remove_orphans(self) -> list[str]:
        return []
