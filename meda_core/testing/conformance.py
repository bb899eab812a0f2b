"""Conformance suites per backend role: subclass one and provide its fixtures.

    from meda_core.testing.conformance import StorageConformance

    class TestMyStorage(StorageConformance):
        @pytest.fixture
        def backend(self, backend_context):
            return MyStorage(backend_context)

Hypervisor suites also need ``launch`` (a factory ``name -> LaunchSpec`` of a VM that
boots) and may override ``stop_timeout``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meda_core.backends.roles import (
    Availability,
    Backend,
    Capability,
    GuestAddressing,
    HypervisorBackend,
    ImageFiles,
    LaunchSpec,
    NetworkAttachment,
    NetworkBackend,
    NicKind,
    RegistryBackend,
    StorageBackend,
)
from meda_core.errors import Conflict, MedaError
from meda_core.host import processes as procs
from meda_core.inputs.references import Reference
from meda_core.models import PortForward, RuntimeInfo

MiB = 1024 * 1024
LaunchFactory = Callable[[str], LaunchSpec]


class BackendConformance:
    """What every backend of every role must do."""

    def test_has_a_name_and_role(self, backend: Backend) -> None:
        assert isinstance(backend.name, str) and backend.name
        assert backend.role.value in {"hypervisor", "network", "storage", "registry"}
        assert isinstance(backend.capabilities, frozenset)

    def test_capabilities_are_known(self, backend: Backend) -> None:
        """Each capability is a :class:`Capability`: the core asks for nothing else."""
        known = {capability.value for capability in Capability}
        unknown = sorted(str(c) for c in backend.capabilities if c not in known)
        assert not unknown, f"unknown capabilities {unknown}; known are {sorted(known)}"

    def test_check_available_explains_itself(self, backend: Backend) -> None:
        available = backend.check_available()
        assert isinstance(available, Availability)
        assert available.ok or (available.reason and available.reason.strip())


class StorageConformance(BackendConformance):
    def test_every_disk_is_in_the_declared_format(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        """Hypervisors open a VM's disk as :attr:`StorageBackend.disk_format` says."""
        assert isinstance(backend.disk_format, str) and backend.disk_format
        assert "/" not in backend.disk_name() and backend.disk_name() not in {".", ".."}
        base = tmp_path / "base"
        made = [
            backend.create_disk(base, 32 * MiB),
            backend.create_disk(tmp_path / "on-base", 64 * MiB, base),
            backend.flatten(tmp_path / "on-base", tmp_path / "flat"),
            backend.disk_info(tmp_path / "flat"),
        ]
        assert [info.format for info in made] == [backend.disk_format] * len(made)

    def test_blank_disk_has_requested_size(self, backend: StorageBackend, tmp_path: Path) -> None:
        info = backend.create_disk(tmp_path / "blank", 64 * MiB)
        assert info.virtual_size == 64 * MiB
        assert backend.disk_info(tmp_path / "blank").virtual_size == 64 * MiB

    def test_disk_from_a_base(self, backend: StorageBackend, tmp_path: Path) -> None:
        """An overlay on the base (capability ``copy-on-write``), else a standalone copy."""
        base = tmp_path / "base"
        backend.create_disk(base, 32 * MiB)
        info = backend.create_disk(tmp_path / "overlay", 128 * MiB, base)
        assert info.virtual_size == 128 * MiB
        if Capability.COPY_ON_WRITE in backend.capabilities:
            assert info.backing_file is not None
            assert info.backing_file.resolve() == base.resolve()
        else:
            assert info.backing_file is None

    def test_delete_removes_and_is_idempotent(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        disk = tmp_path / "disk"
        backend.create_disk(disk, 16 * MiB)
        backend.delete_disk(disk)
        assert not disk.exists()
        backend.delete_disk(disk)

    def test_failed_create_leaves_nothing(self, backend: StorageBackend, tmp_path: Path) -> None:
        where = tmp_path / "failed-create"
        where.mkdir()
        with pytest.raises(MedaError):
            backend.create_disk(where / "disk", 16 * MiB, where / "missing-base")
        assert list(where.iterdir()) == []

    def test_flatten_gives_a_standalone_disk(self, backend: StorageBackend, tmp_path: Path) -> None:
        base = tmp_path / "base"
        backend.create_disk(base, 32 * MiB)
        backend.create_disk(tmp_path / "overlay", 64 * MiB, base)
        info = backend.flatten(tmp_path / "overlay", tmp_path / "flat")
        assert info.backing_file is None and info.virtual_size == 64 * MiB

    def test_info_of_missing_disk_is_an_error(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        with pytest.raises(MedaError):
            backend.disk_info(tmp_path / "missing")


class HypervisorConformance(BackendConformance):
    @pytest.fixture
    def stop_timeout(self) -> float:
        return 30.0

    @pytest.fixture
    def running(
        self, backend: HypervisorBackend, launch: LaunchFactory, stop_timeout: float
    ) -> Iterator[tuple[LaunchSpec, RuntimeInfo]]:
        spec = launch("conformance")
        runtime = backend.start(spec)
        try:
            yield spec, runtime
        finally:
            backend.stop(runtime, spec.vm_dir, stop_timeout)
            backend.cleanup(spec.vm_dir)

    def test_start_gives_a_live_identified_process(
        self, backend: HypervisorBackend, running: tuple[LaunchSpec, RuntimeInfo]
    ) -> None:
        _, runtime = running
        assert backend.is_running(runtime)
        assert procs.is_alive(runtime)
        assert runtime.boot_id == procs.boot_id()

    def test_the_watched_process_is_alive_and_exits_with_the_vm(
        self, backend: HypervisorBackend, launch: LaunchFactory, stop_timeout: float
    ) -> None:
        """A server holds a pidfd on it: it must run while the VM does and be gone once the
        VM is stopped (None: the VM is checked at intervals only)."""
        spec = launch("watched")
        runtime = backend.start(spec)
        try:
            watched = backend.watched_process(runtime)
            if watched is None:
                pytest.skip(f"{backend.name} names no process to watch")
            assert procs.is_alive(watched)
        finally:
            backend.stop(runtime, spec.vm_dir, stop_timeout)
            backend.cleanup(spec.vm_dir)
        assert procs.wait_gone(watched, 10)

    def test_recover_finds_the_process_by_uuid_only(
        self, backend: HypervisorBackend, running: tuple[LaunchSpec, RuntimeInfo]
    ) -> None:
        spec, runtime = running
        found = backend.recover(spec.vm_dir, spec.uuid)
        assert found is not None and found.pid == runtime.pid
        assert backend.recover(spec.vm_dir, "00000000-0000-0000-0000-000000000000") is None

    def test_stop_ends_the_process_and_cleanup_removes_runtime_files(
        self, backend: HypervisorBackend, launch: LaunchFactory, stop_timeout: float
    ) -> None:
        spec = launch("stopper")
        before = set(spec.vm_dir.iterdir())
        runtime = backend.start(spec)
        backend.stop(runtime, spec.vm_dir, stop_timeout)
        assert not backend.is_running(runtime)
        backend.cleanup(spec.vm_dir)
        assert backend.recover(spec.vm_dir, spec.uuid) is None
        left = set(spec.vm_dir.iterdir()) - before - {spec.console_log}
        assert left == set(), f"runtime files left behind: {left}"
        backend.stop(runtime, spec.vm_dir, stop_timeout)  # stopping a stopped VM is harmless

    def test_snapshot_then_restore(
        self,
        backend: HypervisorBackend,
        running: tuple[LaunchSpec, RuntimeInfo],
        stop_timeout: float,
        tmp_path: Path,
    ) -> None:
        if Capability.SNAPSHOT not in backend.capabilities:
            pytest.skip(f"{backend.name} has no 'snapshot' capability")
        spec, runtime = running
        state = tmp_path / "saved-state"
        backend.save_state(runtime, spec.vm_dir, state)
        backend.resume(runtime, spec.vm_dir)
        assert state.stat().st_size > 0 and backend.is_running(runtime)
        backend.stop(runtime, spec.vm_dir, stop_timeout)
        backend.cleanup(spec.vm_dir)
        restored = backend.start(dataclasses.replace(spec, restore_state=state))
        try:
            assert backend.is_running(restored) and restored.pid != runtime.pid
        finally:
            backend.stop(restored, spec.vm_dir, stop_timeout)

    def test_failed_start_raises_and_leaves_no_process(
        self, backend: HypervisorBackend, launch: LaunchFactory, tmp_path: Path
    ) -> None:
        spec = launch("broken")
        spec.disk.unlink()
        with pytest.raises(MedaError):
            backend.start(spec)
        assert backend.recover(spec.vm_dir, spec.uuid) is None


class NetworkConformance(BackendConformance):
    """Network backends. Override ``busy_port`` where the backend's ports live elsewhere
    (another namespace): it must yield a TCP port that is in use where the backend looks."""

    @pytest.fixture
    def busy_port(self) -> Iterator[int]:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", 0))
            sock.listen()
            yield sock.getsockname()[1]

    def test_allocation_is_stable_and_distinct(self, backend: NetworkBackend) -> None:
        first = backend.allocate("net-a")
        assert backend.allocate("net-a") == first
        second = backend.allocate("net-b")
        assert second.mac != first.mac
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", first.mac)
        assert int(first.mac.split(":")[0], 16) & 1 == 0, "a MAC must be unicast"
        if Capability.DHCP in backend.capabilities:
            assert first.ip and second.ip and first.ip != second.ip
        backend.release("net-a")
        backend.release("net-b")
        backend.release("net-b")  # idempotent

    def test_concurrent_allocations_get_distinct_addresses(self, backend: NetworkBackend) -> None:
        names = [f"par-{i}" for i in range(10)]
        with ThreadPoolExecutor(max_workers=10) as pool:
            attachments = list(pool.map(backend.allocate, names))
        try:
            assert len({a.mac for a in attachments}) == 10
            if Capability.DHCP in backend.capabilities:
                assert len({a.ip for a in attachments}) == 10
        finally:
            for name in names:
                backend.release(name)

    def test_plug_gives_the_nic_and_unplug_is_idempotent(self, backend: NetworkBackend) -> None:
        attachment = backend.allocate("net-plug")
        try:
            nic = backend.plug("net-plug", attachment)
            assert nic.mac == attachment.mac
            assert nic.kind in set(NicKind)
            assert nic.kind != NicKind.TAP or nic.tap
            assert backend.nic(attachment) == nic, "nic() must say what plug() gives"
            backend.unplug("net-plug", attachment)
            backend.unplug("net-plug", attachment)
        finally:
            backend.release("net-plug")

    def test_an_isolated_nic_is_in_the_vms_namespace(self, backend: NetworkBackend) -> None:
        """``nic`` only says (nothing is made): the dry run shows what a start would plug."""
        if Capability.ISOLATED not in backend.capabilities:
            pytest.skip("the backend does not isolate VMs")
        attachment = backend.allocate("net-iso", isolated=True)
        try:
            assert attachment.netns is not None
            nic = backend.nic(attachment)
            assert nic.mac == attachment.mac and nic.netns == attachment.netns
            assert nic.kind != NicKind.TAP or nic.tap
        finally:
            backend.release("net-iso")

    def test_guest_addressing(self, backend: NetworkBackend) -> None:
        """What the seed tells the guest: nothing, DHCP, or a static address that parses."""
        attachment = backend.allocate("net-addr")
        try:
            addressing = backend.guest_addressing(attachment)
            assert addressing is None or isinstance(addressing, GuestAddressing)
            if addressing is not None and addressing.address is not None:
                interface = ipaddress.ip_interface(addressing.address)
                assert "/" in addressing.address and interface.network.prefixlen > 0
                for server in (addressing.gateway, *addressing.nameservers):
                    assert server is None or ipaddress.ip_address(server)
        finally:
            backend.release("net-addr")

    def test_guest_endpoint(self, backend: NetworkBackend) -> None:
        """Where ``meda ssh`` connects, given a forward of the guest's port 22."""
        attachment = backend.allocate("net-ep")
        try:
            forward = PortForward(host_port=2222, guest_port=22)
            host, port = backend.guest_endpoint("net-ep", attachment, [forward], 22)
            assert ipaddress.ip_address(host) and 0 < port < 65536
        finally:
            backend.release("net-ep")

    def test_guest_endpoint_without_an_address_is_a_conflict(self, backend: NetworkBackend) -> None:
        bare = NetworkAttachment(mac="52:54:00:00:00:01")
        with pytest.raises(Conflict):
            backend.guest_endpoint("net-bare", bare, [], 22)

    def test_host_port_check(self, backend: NetworkBackend, busy_port: int) -> None:
        assert backend.check_host_port(PortForward(host_port=busy_port, guest_port=80))
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", 0))
            free = sock.getsockname()[1]
        # The port was free an instant ago: a backend that says it is not is wrong.
        assert backend.check_host_port(PortForward(host_port=free, guest_port=80)) is None

    def test_nothing_is_orphaned_after_release(self, backend: NetworkBackend) -> None:
        attachment = backend.allocate("net-orphan")
        backend.plug("net-orphan", attachment)
        backend.unplug("net-orphan", attachment)
        backend.release("net-orphan")
        assert backend.orphans() == []


class RegistryConformance(BackendConformance):
    """Registry backends. Needs ``reference``: a factory ``tag -> Reference`` into a
    registry the test may write to."""

    @pytest.fixture
    def image_files(self, tmp_path: Path) -> ImageFiles:
        disk, kernel = tmp_path / "disk.raw", tmp_path / "vmlinuz"
        with disk.open("wb") as f:
            f.write(os.urandom(MiB))
            f.seek(9 * MiB)  # a hole in the middle
            f.write(os.urandom(MiB))
        kernel.write_bytes(os.urandom(64 * 1024))
        return ImageFiles(disk=disk, disk_format="raw", kernel=kernel, cmdline="console=ttyS0")

    def test_push_then_pull_gives_the_same_files_and_digest(
        self,
        backend: RegistryBackend,
        reference: Callable[[str], Reference],
        image_files: ImageFiles,
        tmp_path: Path,
    ) -> None:
        ref = reference("roundtrip")
        seen: list[tuple[int, int]] = []
        digest = backend.push(image_files, ref, lambda done, total: seen.append((done, total)))
        assert digest.startswith("sha256:") and seen
        assert backend.manifest_digest(ref) == digest
        workdir = tmp_path / "pull"
        workdir.mkdir()
        pulled = backend.pull(ref, workdir, lambda done, total: None)
        assert pulled.digest == digest
        assert pulled.disk is not None and image_files.disk is not None
        assert pulled.disk.read_bytes() == image_files.disk.read_bytes()
        assert pulled.kernel is not None and image_files.kernel is not None
        assert pulled.kernel.read_bytes() == image_files.kernel.read_bytes()
        assert pulled.cmdline == "console=ttyS0" and pulled.disk_format == "raw"

    def test_missing_reference(
        self, backend: RegistryBackend, reference: Callable[[str], Reference], tmp_path: Path
    ) -> None:
        ref = reference("never-pushed")
        assert backend.manifest_digest(ref) is None
        with pytest.raises(MedaError):
            backend.pull(ref, tmp_path, lambda done, total: None)
