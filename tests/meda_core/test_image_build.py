"""``meda images build``'s own steps, its root tree made without the network: the disk is
made in the storage backend's format and under its name."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meda_core.backends.catalogue import BackendRegistry
from meda_core.backends.hookspecs import hookimpl
from meda_core.backends.manager import PluginManager
from meda_core.backends.roles import (
    AgentBackend,
    AgentChannel,
    AgentSession,
    Availability,
    DiskInfo,
    ExecCommand,
)
from meda_core.facade import Meda
from meda_core.images import build as imagebuild
from meda_core.images.blobs import sha256_file
from meda_core.settings import Settings
from meda_core.testing.fakes import FakePlugin, FakeStorage


def _small_root(spec: imagebuild.BuildSpec, root: Path, log: imagebuild.Log) -> None:
    """What mmdebstrap would make, in miniature: a file system with a kernel and initrd."""
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "vmlinuz-6.1").write_bytes(b"a kernel")
    (root / "boot" / "initrd.img-6.1").write_bytes(b"an initrd")
    (root / "etc").mkdir()
    (root / "etc" / "os-release").write_text("ID=debian\n")


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4 (e2fsprogs)")
def test_the_built_disk_is_flattened_by_the_storage_backend(
    fake_meda: Meda, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flattened: list[tuple[str, str]] = []
    flatten = FakeStorage.flatten

    def recording(self: FakeStorage, source: Path, dest: Path) -> DiskInfo:
        flattened.append((source.name, dest.name))
        return flatten(self, source, dest)

    monkeypatch.setattr(FakeStorage, "flatten", recording)
    monkeypatch.setattr(imagebuild, "_root_tree", _small_root)
    spec = imagebuild.BuildSpec(disk_headroom_mib=8)
    logged: list[str] = []
    image = imagebuild.build(fake_meda.images, "deb:t", spec, tmp_path / "work", logged.append)
    assert flattened == [("fs.raw", "disk.fake")]  # the storage's format, not a literal
    assert image.disk is not None and image.disk.read_text().startswith("fake ")
    assert (image.source, image.ready_port, image.cmdline) == (
        f"build:{spec.key()}",
        imagebuild.READY_PORT,
        imagebuild.CMDLINE,
    )
    assert logged[-1].startswith("built deb:t: ") and not (tmp_path / "work").exists()
    # Built again from the same inputs, it is found, not made.
    again = imagebuild.build(fake_meda.images, "deb:t", spec, tmp_path / "work", logged.append)
    assert again == image and len(flattened) == 1


# ---- the guest agent: installed and enabled where an agent backend ships a program ----


class ShippingAgent(AgentBackend):
    """An agent backend whose guest program is a file the test writes."""

    name = "shipping"
    program: Path | None = None
    unavailable: str | None = None

    def check_available(self) -> Availability:
        return Availability.no(self.unavailable) if self.unavailable else Availability.yes()

    def ping(self, channel: AgentChannel, timeout: float) -> bool:
        return False

    def exec(self, channel: AgentChannel, command: ExecCommand) -> AgentSession:
        raise NotImplementedError

    def guest_program(self) -> Path | None:
        return self.program


class ShippingPlugin:
    @hookimpl
    def meda_register_backends(self, registry: BackendRegistry) -> None:
        registry.add(ShippingAgent)


@pytest.fixture
def agent_meda(meda_settings: Settings) -> Iterator[Meda]:
    """The fake backends and an agent backend that ships a program (the fake agent has none)."""
    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    plugins.add_plugin("shipping", ShippingPlugin())
    meda = Meda(meda_settings.model_copy(update={"agent": "shipping"}), plugins)
    yield meda
    meda.close()


@pytest.fixture
def trees(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """The root trees the builds made, kept (the build removes its work folder)."""
    kept: list[Path] = []
    disk = imagebuild._disk

    def keeping(images: Any, spec: Any, root: Path, work: Path, log: Any) -> tuple[Path, int]:
        copy = tmp_path / f"tree{len(kept)}"
        shutil.copytree(root, copy, symlinks=True)
        kept.append(copy)
        return disk(images, spec, root, work, log)

    monkeypatch.setattr(imagebuild, "_root_tree", _small_root)
    monkeypatch.setattr(imagebuild, "_disk", keeping)
    return kept


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4 (e2fsprogs)")
def test_the_agent_is_installed_enabled_and_in_the_cache_key(
    agent_meda: Meda, trees: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / "meda-agent"
    program.write_bytes(b"\x7fELF a static agent")
    monkeypatch.setattr(ShippingAgent, "program", program)
    spec = imagebuild.BuildSpec(disk_headroom_mib=8)
    logged: list[str] = []
    image = imagebuild.build(agent_meda.images, "deb:a", spec, tmp_path / "work", logged.append)
    [root] = trees
    installed = root / "usr/local/sbin/meda-agent"
    assert installed.read_bytes() == program.read_bytes()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    unit = (root / "etc/systemd/system/meda-agent.service").read_text()
    for line in (
        "DefaultDependencies=no",
        "Restart=always",
        "ExecStart=/usr/local/sbin/meda-agent",
    ):
        assert line in unit.splitlines()
    enabled = root / "etc/systemd/system/sysinit.target.wants/meda-agent.service"
    assert os.readlink(enabled) == "/etc/systemd/system/meda-agent.service"
    assert any("guest agent installed" in line for line in logged)
    # The program is an input: the same one is found in the cache, another is a new build.
    assert image.source == f"build:{spec.key(sha256_file(program))}" != f"build:{spec.key()}"
    again = imagebuild.build(agent_meda.images, "deb:a", spec, tmp_path / "work", logged.append)
    assert again == image and len(trees) == 1
    program.write_bytes(b"\x7fELF the agent, rebuilt")
    imagebuild.build(agent_meda.images, "deb:a", spec, tmp_path / "work", logged.append)
    assert len(trees) == 2


def test_the_builders_version_is_in_the_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = imagebuild.BuildSpec()
    before = spec.key()
    monkeypatch.setattr(imagebuild, "BUILDER_VERSION", "2")  # images built before the agent
    assert spec.key() != before


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4 (e2fsprogs)")
@pytest.mark.parametrize("unavailable", [None, "gcc is not installed"])
def test_without_an_agent_program_the_image_has_none_and_the_log_says_so(
    agent_meda: Meda,
    trees: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    unavailable: str | None,
) -> None:
    monkeypatch.setattr(ShippingAgent, "unavailable", unavailable)
    logged: list[str] = []
    spec = imagebuild.BuildSpec(disk_headroom_mib=8)
    image = imagebuild.build(agent_meda.images, "deb:n", spec, tmp_path / "work", logged.append)
    assert image.source == f"build:{spec.key()}"
    [root] = trees
    assert not (root / "usr/local/sbin/meda-agent").exists()
    assert not (root / "etc/systemd/system/meda-agent.service").exists()
    [said] = [line for line in logged if line.startswith(imagebuild.NO_AGENT)]
    assert unavailable is None or unavailable in said
