"""The REST API's operations as typed calls returning its response models.

``MedaApi`` is what the CLI (and any program) talks to; ``LocalApi`` runs each call in this
process on a :class:`~meda_core.facade.Meda`, and :class:`~meda_core.interface.remote.RemoteApi`
sends it to a ``meda serve`` over HTTP. The API's routes are ``LocalApi`` behind FastAPI, so both
give the same answers.
"""

from __future__ import annotations

from typing import Any, Protocol

from meda_core.facade import Meda
from meda_core.inputs.sizes import format_size
from meda_core.models import (
    CleanupReport,
    CloneRequest,
    CreateImageRequest,
    CreateVMRequest,
    ImageList,
    ImageResult,
    OperationResult,
    PluginReport,
    PortForward,
    PortForwardList,
    PortForwardResult,
    PruneRequest,
    PruneResult,
    PullRequest,
    PushRequest,
    RunRequest,
    RunResult,
    TemplateList,
    VMAddress,
    VMInfo,
    VMList,
)
from meda_core.models import (
    Protocol as PortProtocol,
)
from meda_core.state.operations import Progress, no_progress
from meda_core.vms.run import run_image
from meda_core.vms.service import power_off_timeout
from meda_core.vms.views import image_info, image_list, template_list, vm_info, vm_list


class MedaApi(Protocol):
    """Every operation of the REST API, with its request and response models."""

    def list_vms(self) -> VMList: ...
    def create_vm(self, request: CreateVMRequest) -> OperationResult: ...
    def get_vm(self, name: str) -> VMInfo: ...
    def start_vm(self, name: str) -> OperationResult: ...
    def stop_vm(
        self, name: str, force: bool = False, timeout: float | None = None
    ) -> OperationResult: ...
    def delete_vm(
        self, name: str, force: bool = False, timeout: float | None = None
    ) -> OperationResult: ...
    def plan_vm(self, name: str, hypervisor: str | None = None) -> dict[str, Any]: ...
    def snapshot_vm(self, name: str) -> OperationResult: ...
    def restore_vm(self, name: str) -> OperationResult: ...
    def clone_vm(self, source: str, request: CloneRequest) -> OperationResult: ...
    def list_templates(self) -> TemplateList: ...
    def vm_ip(self, name: str) -> VMAddress: ...
    def list_forwards(self, name: str) -> PortForwardList: ...
    def add_forward(self, name: str, forward: PortForward) -> PortForwardResult: ...
    def remove_forward(
        self, name: str, host_port: int, protocol: PortProtocol
    ) -> PortForwardResult: ...
    def list_images(self) -> ImageList: ...
    def pull_image(self, request: PullRequest, progress: Progress = ...) -> ImageResult: ...
    def push_image(self, request: PushRequest, progress: Progress = ...) -> ImageResult: ...
    def create_image(self, request: CreateImageRequest) -> ImageResult: ...
    def run_image(self, request: RunRequest, progress: Progress = ...) -> RunResult: ...
    def remove_image(self, ref: str) -> ImageResult: ...
    def prune_images(self, request: PruneRequest) -> PruneResult: ...
    def plugins(self) -> PluginReport: ...
    def cleanup_network(self, dry_run: bool) -> CleanupReport: ...


class LocalApi:
    """:class:`MedaApi` in this process."""

    def __init__(self, meda: Meda) -> None:
        self.meda = meda

    # ---- VMs ----

    def list_vms(self) -> VMList:
        return vm_list(self.meda.vms.list())

    def create_vm(self, request: CreateVMRequest) -> OperationResult:
        vm = self.meda.vms.create(request)
        return OperationResult(
            success=True, message=f"Successfully created VM: {vm.name}", vm=vm_info(vm)
        )

    def get_vm(self, name: str) -> VMInfo:
        return vm_info(self.meda.vms.get(name))

    def start_vm(self, name: str) -> OperationResult:
        vm = self.meda.vms.start(name)
        return OperationResult(success=True, message=f"Started VM: {name}", vm=vm_info(vm))

    def stop_vm(
        self, name: str, force: bool = False, timeout: float | None = None
    ) -> OperationResult:
        seconds = power_off_timeout(force, timeout, self.meda.settings.stop_timeout)
        vm = self.meda.vms.stop(name, seconds)
        message = f"Stopped VM: {name}" + (" (forced)" if seconds == 0 else "")
        return OperationResult(success=True, message=message, vm=vm_info(vm))

    def delete_vm(
        self, name: str, force: bool = False, timeout: float | None = None
    ) -> OperationResult:
        self.meda.vms.delete(name, power_off_timeout(force, timeout, 0.0))
        return OperationResult(success=True, message=f"Deleted VM: {name}")

    def plan_vm(self, name: str, hypervisor: str | None = None) -> dict[str, Any]:
        return self.meda.vms.plan(name, hypervisor)

    # ---- snapshots ----

    def snapshot_vm(self, name: str) -> OperationResult:
        vm = self.meda.snapshots.snapshot(name)
        assert vm.snapshot is not None
        message = (
            f"Snapshot {vm.snapshot.id} of VM {name}: "
            f"{format_size(vm.snapshot.state_bytes)} saved in {vm.snapshot.seconds:.2f}s"
        )
        return OperationResult(success=True, message=message, vm=vm_info(vm))

    def restore_vm(self, name: str) -> OperationResult:
        vm = self.meda.snapshots.restore(name)
        return OperationResult(success=True, message=f"Restored VM: {name}", vm=vm_info(vm))

    def clone_vm(self, source: str, request: CloneRequest) -> OperationResult:
        vm = self.meda.snapshots.clone(source, request.name)
        message = f"Cloned VM {request.name} from {source}"
        return OperationResult(success=True, message=message, vm=vm_info(vm))

    def list_templates(self) -> TemplateList:
        return template_list(self.meda.vms.list())

    # ---- network ----

    def vm_ip(self, name: str) -> VMAddress:
        return self.meda.network.address(name)

    def list_forwards(self, name: str) -> PortForwardList:
        forwards = self.meda.network.forwards(name)
        return PortForwardList(vm=name, forwards=forwards, count=len(forwards))

    def add_forward(self, name: str, forward: PortForward) -> PortForwardResult:
        added = self.meda.network.add_forward(name, forward)
        message = (
            f"Forwarding host port {added.host_port}/{added.protocol.value} "
            f"to {name}:{added.guest_port}: connect to {added.address}{_in_namespace(added.netns)}"
        )
        return PortForwardResult(success=True, message=message, vm=name, forward=added)

    def remove_forward(
        self, name: str, host_port: int, protocol: PortProtocol
    ) -> PortForwardResult:
        removed = self.meda.network.remove_forward(name, host_port, protocol)
        message = f"Removed forward of host port {host_port}/{protocol.value}"
        return PortForwardResult(success=True, message=message, vm=name, forward=removed)

    def cleanup_network(self, dry_run: bool) -> CleanupReport:
        return self.meda.network.cleanup(dry_run)

    # ---- images ----

    def list_images(self) -> ImageList:
        return image_list(self.meda.images.listing())

    def pull_image(self, request: PullRequest, progress: Progress = no_progress) -> ImageResult:
        image = self.meda.images.pull(
            request.image, request.registry, request.org, progress, request.ready_port
        )
        return ImageResult(
            success=True,
            message=f"Pulled {image.source}",
            image=image_info(image),
            digest=image.digest,
        )

    def push_image(self, request: PushRequest, progress: Progress = no_progress) -> ImageResult:
        image, digest = self.meda.images.push(
            request.name,
            request.image,
            request.registry,
            request.org,
            request.dry_run,
            progress,
        )
        verb = "Would push" if request.dry_run else "Pushed"
        return ImageResult(
            success=True,
            message=f"{verb} {image.ref} to {request.image}",
            image=image_info(image),
            digest=digest,
        )

    def create_image(self, request: CreateImageRequest) -> ImageResult:
        image = self.meda.images.create_from_vm(
            request.from_vm,
            request.name,
            request.tag,
            request.registry,
            request.org,
            request.ready_port,
        )
        return ImageResult(
            success=True,
            message=f"Created image {image.ref} from VM {request.from_vm}",
            image=image_info(image),
        )

    def run_image(self, request: RunRequest, progress: Progress = no_progress) -> RunResult:
        meda = self.meda
        vm, run = run_image(meda.images, meda.vms, meda.warm_runs, request, progress)
        verb = "Created" if request.no_start else "Started"
        message = f"{verb} VM {vm.name} from {request.image}"
        if run.path == "warm":
            message += f" (a clone of its warm template {vm.clone_of})"
        elif not request.no_start:
            message += f" (cold start: {run.reason})"
        return RunResult(success=True, message=message, vm=vm_info(vm), run=run)

    def remove_image(self, ref: str) -> ImageResult:
        removed = self.meda.images.remove(ref)
        return ImageResult(success=True, message=f"Removed image {removed.ref}")

    def prune_images(self, request: PruneRequest) -> PruneResult:
        images, blobs, freed = self.meda.images.prune(request.all)
        return PruneResult(
            success=True,
            message=f"Removed {len(images)} image(s), freed {format_size(freed)}",
            removed_images=images,
            removed_blobs=len(blobs),
            freed=format_size(freed),
        )

    # ---- system ----

    def plugins(self) -> PluginReport:
        return self.meda.plugin_report()


def _in_namespace(netns: str | None) -> str:
    return "" if netns is None else f" in network namespace {netns}"
