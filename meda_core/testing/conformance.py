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

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meda_core import procs
from meda_core.backends import (
    Availability,
    Backend,
    HypervisorBackend,
    LaunchSpec,
    StorageBackend,
)
from meda_core.errors import MedaError
from meda_core.models import RuntimeInfo

MiB = 1024 * 1024
LaunchFactory = Callable[[str], LaunchSpec]


class BackendConformance:
    """What every backend of every role must do."""

    def test_has_a_name_and_role(self, backend: Backend) -> None:
        assert isinstance(backend.name, str) and backend.name
        assert backend.role.value in {"hypervisor", "network", "storage", "registry"}
        assert isinstance(backend.capabilities, frozenset)

    def test_check_available_explains_itself(self, backend: Backend) -> None:
        available = backend.check_available()
        assert isinstance(available, Availability)
        assert available.ok or (available.reason and available.reason.strip())


class StorageConformance(BackendConformance):
    def test_blank_disk_has_requested_size(self, backend: StorageBackend, tmp_path: Path) -> None:
        info = backend.create_disk(tmp_path / "blank", 64 * MiB)
        assert info.virtual_size == 64 * MiB
        assert backend.disk_info(tmp_path / "blank").virtual_size == 64 * MiB

    def test_overlay_is_backed_by_base(self, backend: StorageBackend, tmp_path: Path) -> None:
        base = tmp_path / "base"
        backend.create_disk(base, 32 * MiB)
        info = backend.create_disk(tmp_path / "overlay", 128 * MiB, base)
        assert info.virtual_size == 128 * MiB
        assert info.backing_file is not None
        assert info.backing_file.resolve() == base.resolve()

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

    def test_failed_start_raises_and_leaves_no_process(
        self, backend: HypervisorBackend, launch: LaunchFactory, tmp_path: Path
    ) -> None:
        spec = launch("broken")
        spec.disk.unlink()
        with pytest.raises(MedaError):
            backend.start(spec)
        assert backend.recover(spec.vm_dir, spec.uuid) is None


class NetworkConformance(BackendConformance):
    """Network backends: the common checks; grows with the network role's interface."""


class RegistryConformance(BackendConformance):
    """Registry backends: the common checks; grows with the registry role's interface."""
