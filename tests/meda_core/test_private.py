"""A local user reads nothing of MEDA_HOME: not the state, disks, seeds, consoles, keys or
the API token, in a new home or in one an older meda left open."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from meda_cli.commands.serve import api_token
from meda_core.backends.manager import PluginManager
from meda_core.errors import InvalidRequest
from meda_core.facade import Meda
from meda_core.models import CreateVMRequest
from meda_core.settings import Settings
from meda_core.testing.fakes import FakePlugin
from meda_core.testing.intruder import NOBODY, open_to_others, reachable_dir, readable_by_nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as nobody needs root")

SECRET = "#cloud-config\nchpasswd: {list: 'root:hunter2'}\n"


@pytest.fixture
def reachable() -> Iterator[Path]:
    with reachable_dir() as path:
        yield path


def _fake_meda(home: Path) -> Meda:
    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    return Meda(Settings(home=home, stop_timeout=5), plugins)


def _use(home: Path) -> Meda:
    """A home after real work: an image, a VM with secret user data, started (seed,
    console, managed key), snapshotted, and the server's API token."""
    meda = _fake_meda(home)
    kernel = home.parent / "vmlinuz"
    kernel.write_bytes(b"a kernel")
    meda.images.import_files("default", kernel=kernel, cmdline="console=ttyS0")
    meda.vms.create(CreateVMRequest(name="vm1", user_data=SECRET))
    meda.vms.start("vm1")
    meda.snapshots.snapshot("vm1")
    api_token(home, "0.0.0.0", generate=True)
    return meda


def _everything(home: Path) -> list[Path]:
    return [home, *home.rglob("*")]


def _sensitive(home: Path) -> list[Path]:
    vm_dir = home / "vms" / "vm1"
    [state] = vm_dir.glob("snapshots/*/state")
    return [
        home / "state.db",
        vm_dir / "disk.fake",  # FakeStorage names its disks by their format
        vm_dir / "seed.iso",
        vm_dir / "console.log",
        state,
        home / "ssh" / "id_ed25519",
        home / "api-token",
    ]


def test_a_local_user_reads_nothing_meda_made(reachable: Path) -> None:
    home = reachable / "home"
    meda = _use(home)
    try:
        assert all(p.exists() for p in _sensitive(home))
        assert readable_by_nobody(_everything(home)) == []
        # Not only the home's own mode: nothing below it is open to others either.
        assert open_to_others(home) == []
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
    finally:
        meda.vms.delete_all()


def test_an_older_home_left_open_is_tightened_when_opened(reachable: Path) -> None:
    home = reachable / "home"
    _use(home).vms.stop("vm1")
    for path in _everything(home):  # what a meda run with umask 022 left behind
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert set(_sensitive(home)) <= set(readable_by_nobody(_everything(home)))
    meda = _fake_meda(home)
    try:
        assert readable_by_nobody(_everything(home)) == []
        assert open_to_others(home) == []
    finally:
        meda.vms.delete_all()


def test_ssh_folder_made_by_its_lock_is_private(reachable: Path) -> None:
    home = reachable / "home"
    (home / "ssh").mkdir(parents=True, mode=0o755)  # as the lock left it before
    meda = _use(home)
    try:
        assert stat.S_IMODE((home / "ssh").stat().st_mode) == 0o700
    finally:
        meda.vms.delete_all()


def test_a_shared_directory_is_refused_as_home(reachable: Path) -> None:
    shared = reachable / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(InvalidRequest, match="shared directory"):
        Meda(Settings(home=shared))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # left as it was


def test_a_home_another_user_owns_or_can_swap_is_refused(reachable: Path) -> None:
    """Whoever can rename MEDA_HOME (or a folder above it) can swap meda's state for theirs."""
    theirs = reachable / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, -1)
    with pytest.raises(InvalidRequest, match="belongs to uid"):
        Meda(Settings(home=theirs))
    open_folder = reachable / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)  # not sticky: anyone may rename what is in it
    with pytest.raises(InvalidRequest, match="can be changed by other users"):
        Meda(Settings(home=open_folder / "home"))
    assert list(theirs.iterdir()) == list(open_folder.iterdir()) == []  # nothing made
