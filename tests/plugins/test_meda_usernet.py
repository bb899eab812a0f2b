from __future__ import annotations

import pytest

from meda_core.backends.roles import BackendContext, GuestAddressing, NicKind, NicSpec
from meda_core.errors import Conflict
from meda_core.models import PortForward
from meda_core.testing.conformance import NetworkConformance
from meda_usernet import UserNetwork


class TestUserNetworkConformance(NetworkConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> UserNetwork:
        return UserNetwork(backend_context)


def test_guest_gets_slirps_address(backend_context: BackendContext) -> None:
    attachment = UserNetwork(backend_context).allocate("vm")
    assert attachment.ip == "10.0.2.15" and attachment.tap is None


def test_the_guest_is_reached_at_the_forward_of_its_port(backend_context: BackendContext) -> None:
    """Its address lives only inside QEMU: ``meda ssh`` goes through a forward."""
    network = UserNetwork(backend_context)
    attachment = network.allocate("vm")
    forwards = [
        PortForward(host_port=8080, guest_port=80),
        PortForward(host_port=2222, guest_port=22),
    ]
    assert network.guest_endpoint("vm", attachment, forwards, 22) == ("127.0.0.1", 2222)
    with pytest.raises(
        Conflict,
        match=r"forward a host port to its port 22 first \(meda port-forward NAME 2222 22\)",
    ):
        network.guest_endpoint("vm", attachment, forwards[:1], 22)


def test_its_nic_is_user_mode_and_the_guest_asks_dhcp(backend_context: BackendContext) -> None:
    network = UserNetwork(backend_context)
    attachment = network.allocate("vm")
    assert network.nic(attachment) == NicSpec(kind=NicKind.USER, mac=attachment.mac)
    assert network.plug("vm", attachment) == network.nic(attachment)
    assert network.guest_addressing(attachment) == GuestAddressing.dhcp()
