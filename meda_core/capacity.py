"""Admission control: what the host can give VMs, and whether one more fits.

Memory and vCPUs are committed by running VMs (and ones starting); disk space is
checked when a VM is created. The check runs inside the same SQLite transaction that
moves the VM to ``starting`` (or inserts it), so two requests cannot both take the last
room: no time between check and use.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel, computed_field

from meda_core.config import Settings
from meda_core.errors import BackendUnavailable
from meda_core.models import VM, VMState
from meda_core.sizes import parse_size

COMMITTING = frozenset({VMState.STARTING, VMState.RUNNING, VMState.STOPPING})
RETRY_AFTER_SECONDS = 30


class InsufficientCapacity(BackendUnavailable):
    """503 with Retry-After: the host has no room for this now."""

    code = "INSUFFICIENT_CAPACITY"


class Resource(BaseModel):
    total: int
    reserved: int
    committed: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def available(self) -> int:
        return self.total - self.reserved - self.committed


class Capacity(BaseModel):
    memory: Resource
    cpus: Resource
    disk_free: int
    disk_reserved: int


def host_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


def measure(settings: Settings, vms: list[VM]) -> Capacity:
    running = [vm for vm in vms if vm.state in COMMITTING]
    cpus = (os.cpu_count() or 1) * settings.cpu_overcommit
    return Capacity(
        memory=Resource(
            total=host_memory(), reserved=parse_size(settings.reserve_memory),
            committed=sum(vm.spec.memory_bytes for vm in running),
        ),
        cpus=Resource(total=cpus, reserved=settings.reserve_cpus,
                      committed=sum(vm.spec.cpus for vm in running)),
        disk_free=shutil.disk_usage(settings.home).free,
        disk_reserved=parse_size(settings.reserve_disk),
    )  # fmt: skip


def admit_start(settings: Settings, vms: list[VM], vm: VM) -> None:
    """Raise unless ``vm`` can start beside the VMs that already hold resources."""
    capacity = measure(settings, [other for other in vms if other.name != vm.name])
    if vm.spec.memory_bytes > capacity.memory.available:
        _refuse(f"not enough memory for {vm.spec.memory}", capacity)
    if vm.spec.cpus > capacity.cpus.available:
        _refuse(f"not enough vCPUs for {vm.spec.cpus}", capacity)


def admit_create(settings: Settings) -> None:
    capacity = measure(settings, [])
    if capacity.disk_free < capacity.disk_reserved:
        _refuse("the disk under MEDA_HOME is below its reserve", capacity)


def _refuse(reason: str, capacity: Capacity) -> None:
    raise InsufficientCapacity(
        f"{reason} on this host now; try again later",
        retry_after=RETRY_AFTER_SECONDS,
        capacity=capacity.model_dump(),
    )
