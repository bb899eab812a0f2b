"""Operations that span images and VMs: ``run`` an image as a new VM."""

from __future__ import annotations

from meda_core.errors import InvalidRequest, NotFound
from meda_core.images.service import ImageService
from meda_core.inputs.names import parse_image_ref
from meda_core.models import VM, CreateVMRequest, Image, RunInfo, RunRequest
from meda_core.state.operations import Progress, no_progress
from meda_core.vms.service import VMService
from meda_core.vms.templates import WarmRuns


def find_or_pull(
    images: ImageService,
    image: str,
    registry: str | None,
    org: str | None,
    progress: Progress = no_progress,
) -> Image:
    """The local image ``image`` if there is one and no registry was named, else a pull."""
    if registry is None and org is None and "/" not in image:
        try:
            parse_image_ref(image)
            return images.get(image)
        except (NotFound, InvalidRequest):
            pass
    return images.pull(image, registry, org, progress)


def run_image(
    images: ImageService,
    vms: VMService,
    warm: WarmRuns,
    request: RunRequest,
    progress: Progress = no_progress,
) -> tuple[VM, RunInfo]:
    """Pull if needed, then clone the image's warm template if it is ready; else create
    the VM and start it (unless ``no_start``), leaving a template build in the background
    when the image has a ready port. Never waits for a guest's port."""
    image = find_or_pull(images, request.image, request.registry, request.org, progress)
    plan = warm.plan(image, request)
    if plan.info.path == "warm":
        return warm.clone(plan.info, request.name, request), plan.info
    vm = vms.create(
        CreateVMRequest(
            name=request.name,
            user_data=request.user_data,
            memory=request.memory,
            cpus=request.cpus,
            disk=request.disk,
            image=image.ref,
            labels=request.labels,
            ttl=request.ttl,
            restart=request.restart,
        )
    )
    if request.no_start:
        return vm, plan.info
    try:
        vm = vms.start(vm.name)
    except BaseException:
        vms.delete(vm.name)  # a run that cannot start leaves no VM behind
        raise
    if plan.build is not None:  # only now: the caller's VM is started first
        warm.background(plan.build)
    return vm, plan.info
