"""``meda ssh`` finds meda's network namespace in server.json, and never hangs: a real
``meda`` process, with the fake backends, in a namespace that plays the host's own."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meda_core.backends.roles import BackendContext
from meda_core.facade import Meda
from meda_core.models import CreateVMRequest, PortForward
from meda_core.state import serverfile
from meda_core.testing import namespaces
from meda_core.testing.installs import install_entry_points
from meda_core.vms.service import attachment_of
from meda_core.vms.ssh import SSH_PORT, ssh_argv
from meda_usernet import UserNetwork

#: Answers SSH clients with a banner until one sends its own (meda's check before ssh
#: only connects), and prints that client's banner line.
_SSHD = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'SSH-2.0-meda-test\\r\\n')\n"
    "    try:\n"
    "        line = c.makefile('rb').readline().decode().strip()\n"
    "    except OSError:\n"
    "        continue\n"
    "    if line:\n"
    "        print(line, flush=True); break\n"
)


@pytest.fixture
def host_ns() -> Iterator[str]:
    """A namespace that plays the host's own: the CLI runs there, so nothing it tries
    leaves this machine's test namespaces."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = namespaces.create("meda-h")
    try:
        yield name
    finally:
        namespaces.destroy(name)


@pytest.fixture
def running_vm(fake_meda: Meda, fake_image: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A running VM of the fake backends, its address, and the environment in which a
    ``meda`` subprocess loads those backends."""
    fake_meda.vms.create(CreateVMRequest(name="vm1"))
    vm = fake_meda.vms.start("vm1")
    assert vm.ip is not None
    site = install_entry_points(tmp_path / "site", "meda-fake", {"fake": "meda_fake_plugin"})
    (site / "meda_fake_plugin.py").write_text(
        "from meda_core.testing.fakes import FakePlugin\n"
        "meda_register_backends = FakePlugin().meda_register_backends\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEDA_")}
    env.update(
        PYTHONPATH=str(site),
        MEDA_HOME=str(fake_meda.settings.home),
        MEDA_HYPERVISOR="fake",
        MEDA_STORAGE="fake",
        MEDA_NETWORK="fake",
        MEDA_REGISTRY="fake",
    )
    return vm.ip, env


def _meda_ssh(host_ns: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    argv = [
        "ip",
        "netns",
        "exec",
        host_ns,
        sys.executable,
        "-m",
        "meda_cli.main",
        "ssh",
        "vm1",
        "--",
        "true",
    ]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def _address(ns: str, ip: str) -> None:
    namespaces.run_in(ns, "ip", "link", "set", "lo", "up")
    namespaces.run_in(ns, "ip", "addr", "add", f"{ip}/32", "dev", "lo")


def _write_server_file(home: Path, ns: str) -> None:
    info = serverfile.ServerFile(url="http://127.0.0.1:1", netns=ns, pid=1)
    serverfile.write(home, info)


def test_ssh_enters_the_namespace_named_in_server_json(
    netns: str, host_ns: str, running_vm: tuple[str, dict[str, str]], fake_meda: Meda
) -> None:
    """No MEDA_NETNS in this shell: server.json says where meda's network is."""
    ip, env = running_vm
    _address(netns, ip)
    _write_server_file(fake_meda.settings.home, netns)
    sshd = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _SSHD, ip, "22"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sshd.stdout is not None and sshd.stdout.readline().strip() == "ready"
        result, _ = _meda_ssh(host_ns, env)
        # The fake server speaks no SSH past its banner: ssh fails, having got there.
        assert result.returncode != 0
        assert select.select([sshd.stdout], [], [], 10)[0], f"ssh never came: {result.stderr}"
        assert sshd.stdout.readline().startswith("SSH-2.0-OpenSSH"), result.stderr
    finally:
        sshd.kill()
        sshd.wait()


def test_an_unreachable_vm_is_a_quick_clear_error(
    netns: str, host_ns: str, running_vm: tuple[str, dict[str, str]], fake_meda: Meda
) -> None:
    ip, env = running_vm
    _address(netns, ip)  # the address is there, its port 22 is closed
    _write_server_file(fake_meda.settings.home, netns)
    result, seconds = _meda_ssh(host_ns, env)
    assert result.returncode == 5, result.stderr
    assert f"does not answer at {ip}:22" in result.stderr
    assert f"network namespace '{netns}'" in result.stderr and "server.json" in result.stderr
    assert seconds < 15


def test_without_server_json_the_message_names_meda_netns(
    host_ns: str, running_vm: tuple[str, dict[str, str]]
) -> None:
    """No server running, no MEDA_NETNS: the VM is out of reach here, and the message
    says what to set (before, ssh waited with no word)."""
    _, env = running_vm
    result, seconds = _meda_ssh(host_ns, env)
    assert result.returncode == 5, result.stderr
    assert "set MEDA_NETNS" in result.stderr
    assert seconds < 15


def test_a_user_network_vm_is_reached_through_its_forward(
    fake_meda: Meda, fake_image: str, netns: str, backend_context: BackendContext
) -> None:
    """User-mode VMs keep being reached on loopback, at the forward of their port 22."""
    from meda_core.vms.ssh import check_reachable  # (new: kept here so the rest runs on older code)

    fake_meda.vms.create(CreateVMRequest(name="vm1"))
    vm = fake_meda.vms.start("vm1")
    user_network = UserNetwork(backend_context)
    namespaces.run_in(netns, "ip", "link", "set", "lo", "up")
    with namespaces.listener(netns, "127.0.0.1") as port:
        forward = PortForward(host_port=port, guest_port=22)
        endpoint = user_network.guest_endpoint("vm1", attachment_of(vm), [forward], SSH_PORT)
        argv = ssh_argv(vm, endpoint, fake_meda.settings.home, [], netns)
        assert argv[-1] == "meda@127.0.0.1" and argv[argv.index("-p") + 1] == str(port)
        assert "ConnectTimeout=10" in argv
        check_reachable(vm, endpoint, netns, "MEDA_NETNS")  # answers: no error


def test_ssh_waits_for_a_booting_guest_when_asked(
    netns: str, host_ns: str, running_vm: tuple[str, dict[str, str]], fake_meda: Meda
) -> None:
    """`meda ssh NAME --wait S`: the guest's sshd comes up while meda waits for it."""
    ip, env = running_vm
    _address(netns, ip)
    _write_server_file(fake_meda.settings.home, netns)
    argv = [
        "ip",
        "netns",
        "exec",
        host_ns,
        sys.executable,
        "-m",
        "meda_cli.main",
        "ssh",
        "vm1",
        "--wait",
        "60",
        "--",
        "true",
    ]
    client = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # the guest is still booting: nothing on port 22 yet
    sshd = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _SSHD, ip, "22"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sshd.stdout is not None
        assert select.select([sshd.stdout], [], [], 30)[0], "ssh never came"
        assert sshd.stdout.readline().strip() == "ready"
        assert select.select([sshd.stdout], [], [], 30)[0], "ssh never came"
        assert sshd.stdout.readline().startswith("SSH-2.0-OpenSSH")
    finally:
        for process in (sshd, client):
            process.kill()
            process.wait()
