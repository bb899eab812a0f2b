"""The test guest's build (meda_core.testing.guest): its kernel modules and its agent."""

from __future__ import annotations

import re
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest

from meda_core.facade import Meda
from meda_core.models import CreateVMRequest
from meda_core.settings import Settings
from meda_core.testing import cpio
from meda_core.testing.guest import (
    AGENT_EXIT_MARKER,
    AGENT_PATH,
    MODULES,
    BootableGuest,
    build_test_guest,
    guest_output,
    installed_agent_program,
)
from meda_core.testing.installs import install_entry_points
from meda_core.testing.pytest_plugin import wait_for_text


def _depends(module: Path) -> list[str]:
    """What the module's own ``.modinfo`` says it needs loaded first (``modinfo -F depends``)."""
    found = re.search(rb"\0depends=([^\0]*)\0", module.read_bytes())
    assert found is not None, f"{module.name} has no depends= entry"
    return [name for name in found.group(1).decode().split(",") if name]


def test_each_module_is_loaded_after_what_it_depends_on(test_guest: BootableGuest) -> None:
    modules = test_guest.kernel.parent / "modules"
    loaded: set[str] = set()
    for path in MODULES:
        name = Path(path).name
        needs = {d.replace("-", "_") for d in _depends(modules / name)}
        assert needs <= loaded, f"{name} needs {sorted(needs - loaded)} loaded before it"
        loaded.add(name.removesuffix(".ko"))
    assert {"virtio_console", "vmw_vsock_virtio_transport"} <= loaded  # the agent's channels


@pytest.fixture
def cache(test_guest: BootableGuest, tmp_path: Path) -> Path:
    """A cache holding the test guest's kernel (not fetched again): initramfs only."""
    folder = tmp_path / "cache"
    folder.mkdir()
    kernel_dir = test_guest.kernel.parent
    shutil.copytree(kernel_dir, folder / kernel_dir.name)
    return folder


def test_the_agent_program_is_in_the_initramfs_and_in_its_cache_key(
    cache: Path, tmp_path: Path
) -> None:
    program = tmp_path / "agent"
    program.write_bytes(b"\x7fELF a static agent")
    without = build_test_guest(cache, agent_program=None)
    with_agent = build_test_guest(cache, agent_program=program)
    assert not without.agent and with_agent.agent and with_agent.initrd != without.initrd
    entries = cpio.read_initramfs(with_agent.initrd)
    assert entries[AGENT_PATH].data == program.read_bytes()
    assert stat.S_IMODE(entries[AGENT_PATH].mode) == 0o755
    assert AGENT_PATH not in cpio.read_initramfs(without.initrd)
    assert f"/{AGENT_PATH} >/dev/null" in entries["init"].data.decode()
    program.write_bytes(b"\x7fELF another build of it")  # a new program is a new initramfs
    assert build_test_guest(cache, agent_program=program).initrd != with_agent.initrd


def test_the_agent_starts_before_the_network(cache: Path, tmp_path: Path) -> None:
    program = tmp_path / "agent"
    program.write_bytes(b"\x7fELF")
    init = cpio.read_initramfs(build_test_guest(cache, agent_program=program).initrd)["init"]
    text = init.data.decode()
    assert text.index(f"/{AGENT_PATH}") < text.index("ip link set eth0 up")


def test_without_an_agent_backend_the_guest_has_none_and_says_so(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("importlib.metadata.entry_points", lambda **kw: [])
    guest = build_test_guest(cache)
    assert not guest.agent
    assert "no agent" in capsys.readouterr().err
    assert AGENT_PATH not in cpio.read_initramfs(guest.initrd)


AGENT_PLUGIN = """
import os
from meda_core.backends.roles import AgentBackend, Availability
from meda_core.plugin import BackendError, hookimpl

class ShippingAgent(AgentBackend):
    name = "shipping"

    def check_available(self):
        return Availability.yes()

    def ping(self, channel, timeout):
        return False

    def exec(self, channel, command):
        raise NotImplementedError

    def guest_program(self):
        if os.environ.get("SHIPPING_AGENT_FAILS"):
            raise BackendError("cannot build the agent: gcc not found")
        program = self.context.cache_dir / "shipping-agent"
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_bytes(b"\\x7fELF shipped by " + self.name.encode())
        return program

@hookimpl
def meda_register_backends(registry):
    registry.add(ShippingAgent)
"""


@pytest.fixture
def shipping_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent plugin installed as pip would (entry points), whose program is a file."""
    site = install_entry_points(tmp_path / "site", "meda-shipping", {"shipping": "shipping_agent"})
    (site / "shipping_agent.py").write_text(AGENT_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "shipping_agent", raising=False)
    monkeypatch.setenv("MEDA_AGENT", "shipping")  # not the agent meda ships


@pytest.mark.usefixtures("shipping_plugin")
def test_the_installed_agent_backend_gives_the_program(cache: Path, tmp_path: Path) -> None:
    """Found through the plugin entry points: the test guest's code never names a plugin."""
    program = installed_agent_program(tmp_path / "home")
    assert program is not None and program.read_bytes() == b"\x7fELF shipped by shipping"
    guest = build_test_guest(cache)
    assert guest.agent
    assert cpio.read_initramfs(guest.initrd)[AGENT_PATH].data == program.read_bytes()


@pytest.mark.usefixtures("shipping_plugin")
def test_an_agent_that_cannot_be_built_leaves_a_guest_without_one(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHIPPING_AGENT_FAILS", "1")
    guest = build_test_guest(cache)
    assert not guest.agent and "gcc not found" in capsys.readouterr().err


@pytest.mark.vm
def test_an_agent_that_ends_is_started_again_and_its_first_exit_is_said(
    cache: Path, tmp_path: Path
) -> None:
    """As systemd's Restart=always in the built image: a stand-in that ends at once."""
    program = tmp_path / "agent"
    program.write_text("#!/bin/sh\necho MEDA-TEST-AGENT-RUN > /dev/console\nexit 7\n")
    guest = build_test_guest(cache, agent_program=program)
    settings = Settings(home=tmp_path / "home", hypervisor="qemu", storage="qcow2", network="user")
    meda = Meda(settings)
    meda.images.import_files("g", kernel=guest.kernel, initrd=guest.initrd, cmdline=guest.cmdline)
    vm = meda.vms.create(CreateVMRequest(name="respawn", image="g", memory="256M"))
    try:
        meda.vms.start("respawn")
        wait_for_text(vm.console_log, f"{AGENT_EXIT_MARKER}7", timeout=60)
        deadline = time.monotonic() + 30
        while guest_output(vm.console_log.read_text()).count("MEDA-TEST-AGENT-RUN") < 3:
            assert time.monotonic() < deadline, "the agent was not started again"
            time.sleep(0.5)
        assert vm.console_log.read_text().count(AGENT_EXIT_MARKER) == 1
    finally:
        meda.vms.delete_all()
