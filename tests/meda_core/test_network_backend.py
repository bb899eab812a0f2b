"""What a network backend answers for the core: its NIC, the guest's addressing and where
a guest port is reached (defaults in the base class), and the core asking it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from meda_core.backends.roles import (
    Availability,
    BackendContext,
    Capability,
    GuestAddressing,
    LaunchSpec,
    NetworkAttachment,
    NetworkBackend,
    NicKind,
    NicSpec,
)
from meda_core.errors import Conflict
from meda_core.facade import Meda
from meda_core.models import VM, CreateVMRequest, ForwardListener, PortForward
from meda_core.testing.fakes import FakeHypervisor, FakeNetwork
from meda_core.vms import seed
from meda_core.vms.ssh import SSH_PORT

MAC = "52:54:00:00:00:07"


class Minimal(NetworkBackend):
    """A backend that writes only the abstract methods: it gets every default."""

    name = "minimal"

    def check_available(self) -> Availability:
        return Availability.yes()

    def allocate(self, vm: str, isolated: bool = False) -> NetworkAttachment:
        return NetworkAttachment(mac=MAC, ip="192.0.2.7", tap="mini0")

    def release(self, vm: str) -> None:
        pass

    def plug(self, vm: str, attachment: NetworkAttachment) -> NicSpec:
        return self.nic(attachment)

    def unplug(self, vm: str, attachment: NetworkAttachment) -> None:
        pass

    def check_host_port(self, forward: PortForward) -> str | None:
        return None

    def forward_listeners(self, forward: PortForward) -> list[ForwardListener]:
        return []

    def apply_forwards(self) -> None:
        pass

    def restore(self) -> None:
        pass

    def orphans(self) -> list[str]:
        return []

    def remove_orphans(self) -> list[str]:
        return []


def test_the_defaults_fit_a_guest_with_an_address_and_a_tap(
    backend_context: BackendContext,
) -> None:
    network = Minimal(backend_context)
    attachment = network.allocate("vm")
    assert network.nic(attachment) == NicSpec(kind=NicKind.TAP, mac=MAC, tap="mini0")
    no_tap = NetworkAttachment(mac=MAC, netns="ns")
    assert network.nic(no_tap) == NicSpec(kind=NicKind.USER, mac=MAC, netns="ns")
    assert network.guest_addressing(attachment) == GuestAddressing.dhcp()
    assert network.guest_endpoint("vm", attachment, [], 22) == ("192.0.2.7", 22)
    with pytest.raises(Conflict, match="VM 'vm' has no address"):
        network.guest_endpoint("vm", no_tap, [], 22)


def test_the_seed_writes_what_the_backend_says() -> None:
    vm = VM.model_construct(mac=MAC)

    def nic(addressing: GuestAddressing | None) -> Any:
        text = seed.network_config(vm, addressing)
        return None if text is None else yaml.safe_load(text)["ethernets"]["eth0"]

    assert nic(None) is None
    match = {"match": {"macaddress": MAC}, "set-name": "eth0"}
    assert nic(GuestAddressing.dhcp()) == {**match, "dhcp4": True}
    assert nic(GuestAddressing.static("192.0.2.7/24")) == {**match, "addresses": ["192.0.2.7/24"]}
    assert seed.network_config(VM.model_construct(mac=None), GuestAddressing.dhcp()) is None


def test_capabilities_keep_their_words() -> None:
    """Stored and shown as before: each member is the string it replaced."""
    assert Capability.HOSTFWD == "hostfwd" and f"{Capability.DISK_SWITCH}" == "disk-switch"
    assert Capability.COPY_ON_WRITE in frozenset({"copy-on-write"})


def test_the_plan_shows_the_nic_the_backend_names(
    fake_meda: Meda, fake_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dry run asks the VM's network backend for its NIC, it does not guess one."""
    launches: list[LaunchSpec] = []

    def plan(self: FakeHypervisor, launch: LaunchSpec) -> dict[str, Any]:
        launches.append(launch)
        return {}

    def named_nic(self: FakeNetwork, attachment: NetworkAttachment) -> NicSpec:
        return NicSpec(kind=NicKind.TAP, mac=attachment.mac, tap="named-by-it", netns="its-ns")

    monkeypatch.setattr(FakeHypervisor, "plan", plan)
    monkeypatch.setattr(FakeNetwork, "nic", named_nic)
    vm = fake_meda.vms.create(CreateVMRequest(name="vm1"))
    fake_meda.vms.plan("vm1")
    assert launches[0].nics == (
        NicSpec(kind=NicKind.TAP, mac=vm.mac or "", tap="named-by-it", netns="its-ns"),
    )
    assert launches[0].netns == "its-ns"


def test_a_guest_port_is_reached_where_the_backend_says(fake_meda: Meda, fake_image: str) -> None:
    fake_meda.vms.create(CreateVMRequest(name="vm1"))
    with pytest.raises(Conflict, match="VM 'vm1' is stopped, not running"):
        fake_meda.network.guest_endpoint("vm1", SSH_PORT)
    vm = fake_meda.vms.start("vm1")
    assert fake_meda.network.guest_endpoint("vm1", SSH_PORT) == (vm.ip, 22)
