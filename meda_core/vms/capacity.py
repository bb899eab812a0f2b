"""Admission control: what the host can give VMs, and whether one more fits.

A request that can never fit (more memory than the host has less its reserve, more vCPUs
than its cores x MEDA_CPU_OVERCOMMIT less the reserve, a disk larger than the file system
under MEDA_HOME) is refused with 400: waiting would not help. Memory and vCPUs are
committed by running VMs (and ones starting); a VM that fits the host but not beside
them now gets 503 with Retry-After. The check runs inside the same SQLite transaction
that moves the VM to ``starting`` (or inserts it), so two requests cannot both take the
last room: no time between check and use.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, computed_field

from meda_core.errors import ExceedsHost, InsufficientCapacity
from meda_core.inputs.sizes import format_size, parse_size
from meda_core.models import VM, VMSpec, VMState

if TYPE_CHECKING:  # a client of a server reads Capacity without meda's settings
    from meda_core.settings import Settings

COMMITTING = frozenset({VMState.STARTING, VMState.RUNNING, VMState.STOPPING})
RETRY_AFTER_SECONDS = 30


class Resource(BaseModel):
    physical: int = Field(description="What the host has")
    total: int = Field(description="What VMs may be given in all (physical x overcommit)")
    reserved: int = Field(description="Held back for the host")
    committed: int = Field(description="Held by running VMs")

    @computed_field(description="The most one VM may ask for")  # type: ignore[prop-decorator]
    @property
    def allowed(self) -> int:
        return self.total - self.reserved

    @computed_field(description="What a VM starting now may take")  # type: ignore[prop-decorator]
    @property
    def available(self) -> int:
        return self.allowed - self.committed


class Capacity(BaseModel):
    memory: Resource
    cpus: Resource
    disk_size: int = Field(description="Size of the file system under MEDA_HOME")
    disk_free: int
    disk_reserved: int
    #: Why the allowed figures differ from the physical ones.
    notes: list[str]


def host_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


def measure(settings: Settings, vms: list[VM]) -> Capacity:
    running = [vm for vm in vms if vm.state in COMMITTING]
    cores, memory = os.cpu_count() or 1, host_memory()
    disk = shutil.disk_usage(settings.home)
    capacity = Capacity(
        memory=Resource(
            physical=memory,
            total=memory,
            reserved=parse_size(settings.reserve_memory),
            committed=sum(vm.spec.memory_bytes for vm in running),
        ),
        cpus=Resource(
            physical=cores,
            total=cores * settings.cpu_overcommit,
            reserved=settings.reserve_cpus,
            committed=sum(vm.spec.cpus for vm in running),
        ),
        disk_size=disk.total,
        disk_free=disk.free,
        disk_reserved=parse_size(settings.reserve_disk),
        notes=[],
    )
    capacity.notes = _notes(settings, capacity)
    return capacity


def _notes(settings: Settings, capacity: Capacity) -> list[str]:
    memory, cpus = capacity.memory, capacity.cpus
    return [
        f"memory: {format_size(memory.physical)} on the host less MEDA_RESERVE_MEMORY="
        f"{settings.reserve_memory} for the host leaves {format_size(memory.allowed)} for VMs",
        f"vCPUs: {cpus.physical} host CPU(s) x MEDA_CPU_OVERCOMMIT={settings.cpu_overcommit} "
        f"(vCPUs share cores) less MEDA_RESERVE_CPUS={settings.reserve_cpus} leaves "
        f"{cpus.allowed} for VMs",
        f"disk: VM disks grow as written; one may be at most the file system under "
        f"MEDA_HOME ({format_size(capacity.disk_size)}) less MEDA_RESERVE_DISK="
        f"{settings.reserve_disk}, and VMs are created only while that much is free",
    ]


def check_possible(settings: Settings, spec: VMSpec, disk: bool = True) -> None:
    """Raise :class:`ExceedsHost` if a VM of ``spec`` could never run here (``disk``:
    its disk is checked too, at create)."""
    _check_possible(measure(settings, []), spec, disk)


def _check_possible(capacity: Capacity, spec: VMSpec, disk: bool) -> None:
    asks: list[tuple[str, int, int, Callable[[int], str]]] = [
        ("memory", spec.memory_bytes, capacity.memory.allowed, format_size),
        ("vCPUs", spec.cpus, capacity.cpus.allowed, str),
    ]
    if disk:
        asks.append(
            ("disk", spec.disk_bytes, capacity.disk_size - capacity.disk_reserved, format_size)
        )
    for what, asked, most, show in asks:
        if asked > most:
            raise ExceedsHost(
                f"{what} {show(asked)} is more than this host can ever give a VM "
                f"(at most {show(most)}); ask for less",
                resource=what,
                requested=show(asked),
                allowed=show(most),
                capacity=capacity.model_dump(),
            )


def admit_start(settings: Settings, vms: list[VM], vm: VM) -> None:
    """Raise unless ``vm`` can start beside the VMs that already hold resources."""
    capacity = measure(settings, [other for other in vms if other.name != vm.name])
    _check_possible(capacity, vm.spec, disk=False)  # a VM an older meda let in, perhaps
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
        f"{reason} on this host now (running VMs hold the rest); try again later",
        retry_after=RETRY_AFTER_SECONDS,
        capacity=capacity.model_dump(),
    )
