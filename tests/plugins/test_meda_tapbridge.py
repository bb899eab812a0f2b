from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meda_core.backends import BackendContext
from meda_core.testing.conformance import NetworkConformance
from meda_core.testing.namespaces import destroy, run_in
from meda_tapbridge import TapBridgeNetwork, nft
from meda_tapbridge.settings import BridgeSettings

LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
)


@pytest.fixture
def in_netns(backend_context: BackendContext, netns: str) -> BackendContext:
    backend_context.settings.netns = netns
    return backend_context


class TestTapBridgeConformance(NetworkConformance):
    @pytest.fixture
    def backend(self, in_netns: BackendContext) -> TapBridgeNetwork:
        backend = TapBridgeNetwork(in_netns)
        available = backend.check_available()
        if not available.ok:
            pytest.skip(available.reason or "")
        return backend

    @pytest.fixture
    def busy_port(self, netns: str) -> Iterator[int]:
        listener = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", LISTEN],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        yield port
        listener.kill()
        listener.wait()


def test_rules_render_forwards_for_tcp_and_udp() -> None:
    text = nft.render(
        "192.168.100.0/24",
        "meda0",
        [("192.168.100.2", 8080, 80, "tcp"), ("192.168.100.3", 53, 5353, "udp")],
    )
    assert text.count("tcp dport 8080 dnat to 192.168.100.2:80") == 2  # prerouting + output
    assert text.count("udp dport 53 dnat to 192.168.100.3:5353") == 2
    assert "masquerade" in text


def test_tap_names_fit_the_kernel_limit() -> None:
    settings = BridgeSettings(subnet="10.0.0.0/16")
    assert settings.tap_name("10.0.255.254") == "mtap65534"
    assert len(settings.tap_name("10.0.255.254")) <= 15
    assert settings.gateway_ip == "10.0.0.1"
    assert "10.0.0.1" not in settings.guest_addresses()[:3]


def test_plug_builds_the_network_and_release_removes_all_of_it(
    in_netns: BackendContext, netns: str
) -> None:
    backend = TapBridgeNetwork(in_netns)
    attachment = backend.allocate("vm1")
    backend.plug("vm1", attachment)
    links = run_in(netns, "ip", "-o", "link", "show")
    assert "meda0" in links and f"{attachment.tap}" in links
    assert "table ip meda" in run_in(netns, "nft", "list", "ruleset")
    assert backend.dhcp.running() is not None
    hosts = backend.dhcp.hostsfile.read_text()
    assert f"{attachment.mac},{attachment.ip},vm1" in hosts
    backend.unplug("vm1", attachment)
    backend.release("vm1")
    time.sleep(0.1)
    assert backend.dhcp.running() is None
    assert not backend.state_dir.exists()
    # The netns fixture asserts that links, rules and processes are as before.


def test_cleanup_dry_run_changes_nothing(in_netns: BackendContext, netns: str) -> None:
    backend = TapBridgeNetwork(in_netns)
    attachment = backend.allocate("ghost")
    backend.plug("ghost", attachment)  # a tap, a lease, dnsmasq and rules: no VM owns them
    found = backend.orphans()
    assert any("tap" in o for o in found) and any("lease" in o for o in found)
    assert backend.orphans() == found  # looking twice changes nothing
    assert backend.remove_orphans() == found
    assert backend.orphans() == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDA_SUBNET": "192.168.100.0/30"}, "room"),
        ({"MEDA_SUBNET": "192.168.100.5/24"}, "host bits"),
        ({"MEDA_GATEWAY": "10.0.0.1"}, "not in subnet"),
        ({"MEDA_BRIDGE": "a-very-long-bridge-name"}, "MEDA_BRIDGE"),
    ],
)
def test_bad_settings_make_it_unavailable_with_a_reason(
    backend_context: BackendContext,
    monkeypatch: pytest.MonkeyPatch,
    env: dict,
    message: str,  # type: ignore[type-arg]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reason = TapBridgeNetwork(backend_context).check_available().reason
    assert reason and message in reason


def test_meda_makes_its_namespace_and_deletes_it_with_the_network(
    backend_context: BackendContext,
) -> None:
    name = f"meda-made-{secrets.token_hex(3)}"
    backend_context.settings.netns = name
    backend_context.settings.netns_create = True
    backend = TapBridgeNetwork(backend_context)
    try:
        assert backend.check_available().ok
        attachment = backend.allocate("vm1")
        backend.plug("vm1", attachment)
        assert Path(f"/run/netns/{name}").exists()
        backend.unplug("vm1", attachment)
        backend.release("vm1")
        assert not Path(f"/run/netns/{name}").exists()
    finally:
        destroy(name)  # only if the test failed half-way
