"""VM and image records turned into the seed's response shapes."""

from __future__ import annotations

from meda_core.inputs.sizes import format_size
from meda_core.models import (
    VM,
    Image,
    ImageInfo,
    ImageList,
    Snapshot,
    SnapshotInfo,
    TemplateInfo,
    TemplateList,
    VMDetails,
    VMInfo,
    VMList,
    VMSummary,
)


def vm_summary(vm: VM) -> VMSummary:
    return VMSummary(
        name=vm.name,
        state=vm.state,
        ip=vm.ip,
        memory=vm.spec.memory,
        disk=vm.spec.disk,
        cpus=vm.spec.cpus,
        image=vm.image,
        labels=vm.labels,
    )


def vm_list(vms: list[VM]) -> VMList:
    return VMList(vms=[vm_summary(vm) for vm in vms], count=len(vms))


def vm_info(vm: VM) -> VMInfo:
    runtime = vm.runtime
    return VMInfo(
        name=vm.name,
        state=vm.state,
        ip=vm.ip,
        labels=vm.labels,
        lifecycle=vm.lifecycle,
        details=VMDetails(
            network=vm.network,
            gateway=vm.gateway,
            port_forwards=vm.port_forwards,
            subnet=vm.subnet,
            mac=vm.mac,
            tap_device=vm.tap_device,
            memory=vm.spec.memory,
            disk_size=vm.spec.disk,
            cpus=vm.spec.cpus,
            vm_dir=str(vm.vm_dir),
            image=vm.image,
            hypervisor=vm.hypervisor,
            storage=vm.storage,
            accelerator=runtime.accelerator if runtime else None,
            pid=runtime.pid if runtime else None,
            console_log=str(vm.console_log),
            created=vm.created,
            last_error=vm.last_error,
            launch=dict(runtime.extra) if runtime else None,
            template=vm.template,
            clone_of=vm.clone_of,
            snapshot=snapshot_info(vm.snapshot),
        ),
    )


def snapshot_info(snapshot: Snapshot | None) -> SnapshotInfo | None:
    if snapshot is None:
        return None
    return SnapshotInfo(
        id=snapshot.id,
        created=snapshot.created,
        state_size=format_size(snapshot.state_bytes),
        save_seconds=round(snapshot.seconds, 3),
    )


def template_list(vms: list[VM]) -> TemplateList:
    templates = [
        TemplateInfo(
            name=vm.name,
            image=vm.image,
            memory=vm.spec.memory,
            cpus=vm.spec.cpus,
            disk=vm.spec.disk,
            snapshot=snapshot_info(vm.snapshot),
            clones=sorted(c.name for c in vms if c.clone_of == vm.name),
        )
        for vm in vms
        if vm.template
    ]
    return TemplateList(templates=templates, count=len(templates))


def image_info(image: Image, used_by: list[str] | None = None) -> ImageInfo:
    return ImageInfo(
        name=image.name,
        tag=image.tag,
        registry=image.registry,
        org=image.org,
        size=format_size(image.size),
        created=image.created,
        digest=image.digest,
        kernel=image.kernel is not None,
        disk=image.disk is not None,
        cmdline=image.cmdline,
        used_by=used_by or [],
        ready_port=image.ready_port,
    )


def image_list(images: list[tuple[Image, list[str]]]) -> ImageList:
    """The seed's list from ``(image, names of VMs using it)`` pairs."""
    return ImageList(images=[image_info(i, users) for i, users in images], count=len(images))
