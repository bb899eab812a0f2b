"""Snapshots of running VMs, restores, clones of templates and the template list."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from meda_core.backends.roles import (
    DEVICE_LAYOUT,
    Capability,
    HypervisorBackend,
    Role,
    StorageBackend,
)
from meda_core.backends.selection import BackendSelector
from meda_core.errors import Conflict, InvalidRequest
from meda_core.host.files import copy_sparse
from meda_core.models import VM, Policies, Snapshot
from meda_core.vms.guest import GuestService
from meda_core.vms.service import VMService

log = logging.getLogger(__name__)


class SnapshotService:
    """``snapshot``, ``restore``, ``clone`` and ``templates``."""

    def __init__(self, backends: BackendSelector, vms: VMService, guest: GuestService) -> None:
        self._backends = backends
        self._vms = vms
        self._guest = guest

    def snapshot(self, name: str) -> VM:
        """Pause a running VM, save its state with its disk frozen beside it, resume it."""
        vm = self._vms.begin_snapshot(name)
        snapshot_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S-") + secrets.token_hex(3)
        folder = vm.vm_dir / "snapshots" / snapshot_id
        folder.mkdir(parents=True)
        state, frozen = folder / "state", folder / vm.disk_file  # the disk, as it was
        try:
            seconds = self._save(vm, state, frozen)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            self._vms.end_snapshot(vm, None)
            raise
        snapshot = Snapshot(
            id=snapshot_id,
            created=datetime.now(UTC),
            state_file=state,
            disk=frozen,
            state_bytes=_size(state),
            seconds=seconds,
            layout=DEVICE_LAYOUT,
        )
        log.info(
            "snapshot %s of %s: %d bytes in %.2fs", snapshot_id, name, snapshot.state_bytes, seconds
        )
        return self._vms.end_snapshot(vm, snapshot)

    def _save(self, vm: VM, state: Path, frozen: Path) -> float:
        """Save ``vm``'s state to ``state`` and freeze its disk at ``frozen``, the VM paused
        meanwhile; the seconds the state took."""
        assert vm.runtime is not None
        hypervisor = self._backends.by_name(Role.HYPERVISOR, vm.hypervisor, HypervisorBackend)
        storage = self._backends.by_name(Role.STORAGE, vm.storage, StorageBackend)
        started = time.monotonic()
        try:
            hypervisor.save_state(vm.runtime, vm.vm_dir, state)
            seconds = time.monotonic() - started
            # Paused: the disk is as the state expects; freeze it beside the state.
            if _can_switch(hypervisor, storage):
                self._freeze_and_switch(vm, hypervisor, storage, frozen)
            else:  # the VM keeps its disk file: freeze a copy (an overlay is small)
                copy_sparse(vm.disk_path, frozen)
        finally:
            hypervisor.resume(vm.runtime, vm.vm_dir)
        return seconds

    @staticmethod
    def _freeze_and_switch(
        vm: VM, hypervisor: HypervisorBackend, storage: StorageBackend, frozen: Path
    ) -> None:
        """Move the disk beside the state and have the VM write to an overlay on it."""
        assert vm.runtime is not None
        os.rename(vm.disk_path, frozen)
        try:
            storage.create_overlay(vm.disk_path, vm.spec.disk_bytes, frozen)
            hypervisor.switch_disk(vm.runtime, vm.vm_dir, vm.disk_path)
        except BaseException:
            vm.disk_path.unlink(missing_ok=True)
            os.rename(frozen, vm.disk_path)
            raise

    def restore(self, name: str) -> VM:
        """Bring a stopped VM back to the moment of its snapshot (later disk changes go)."""
        vm = self._vms.get(name)
        if vm.snapshot is None:
            raise Conflict(f"VM '{name}' has no snapshot; take one while it runs", name=name)
        _check_layout(vm)
        return self._vms.start(name, restore=vm.snapshot, reset_disk=True)

    def clone(self, source: str, name: str, policies: Policies | None = None) -> VM:
        """A new running VM from ``source``'s snapshot: its disk an overlay on the frozen
        one, its memory read from the saved state, its network its own; its identity
        (hostname, machine-id, SSH host keys) its own too where its agent can set it."""
        template = self._vms.get(source)
        if not template.template:
            raise InvalidRequest(
                f"VM '{source}' is not a template: create it with template=true to clone it",
                name=source,
            )
        if template.snapshot is None:
            raise Conflict(f"template '{source}' has no snapshot yet", name=source)
        snapshot = _check_layout(template)
        self._vms.clone(name, template, policies)
        try:
            vm = self._vms.start(name, restore=snapshot)
        except BaseException:
            self._vms.delete(name)
            raise
        self._guest.refresh_identity(name)
        return vm

    def templates(self) -> list[VM]:
        return [vm for vm in self._vms.list() if vm.template]


def _check_layout(vm: VM) -> Snapshot:
    """``vm``'s snapshot, if it was saved with the devices meda gives guests now."""
    assert vm.snapshot is not None
    if vm.snapshot.layout != DEVICE_LAYOUT:
        raise Conflict(
            f"the snapshot of VM '{vm.name}' was saved by an older meda with other devices "
            f"(layout {vm.snapshot.layout}; now {DEVICE_LAYOUT}: the seed is a CD-ROM and the "
            "guest agent has a channel) and cannot be restored: start the VM and take a new "
            "snapshot",
            name=vm.name,
            layout=vm.snapshot.layout,
            current=DEVICE_LAYOUT,
        )
    return vm.snapshot


def _size(path: Path) -> int:
    """Bytes in a state file, or in a state directory (some hypervisors write several)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _can_switch(hypervisor: HypervisorBackend, storage: StorageBackend) -> bool:
    """Whether the VM can go on writing to an overlay on its frozen disk: the hypervisor
    switches disks and the storage makes overlays (a raw disk cannot rest on another)."""
    return (
        Capability.DISK_SWITCH in hypervisor.capabilities
        and Capability.COPY_ON_WRITE in storage.capabilities
    )
