"""Operations that span images and VMs: ``run`` an image as a new VM."""

from __future__ import annotations

from meda_core.backends import Progress, no_progress
from meda_core.errors import InvalidRequest, NotFound
from meda_core.images import ImageService
from meda_core.models import VM, CreateVMRequest, Image, RunRequest
from meda_core.names import parse_image_ref
from meda_core.vms import VMService
from meda_core.warmrun import WarmRuns


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
    request: RunRequest,
    progress: Progress = no_progress,
    warm: WarmRuns | None = None,
) -> VM:
    """Pull if needed, then clone the image's warm template (``warm``, unless ``cold``
    or ``no_start``); else create the VM and start it unless ``no_start``."""
    image = find_or_pull(images, request.image, request.registry, request.org, progress)
    if warm is not None and not request.cold and not request.no_start:
        return warm.run(image, request)
    vm = vms.create(
        CreateVMRequest(
            name=request.name, user_data=request.user_data, memory=request.memory,
            cpus=request.cpus, disk=request.disk, image=image.ref,
        )
    )  # fmt: skip
    if request.no_start:
        return vm
    try:
        return vms.start(vm.name)
    except BaseException:
        vms.delete(vm.name)  # a run that cannot start leaves no VM behind
        raise
