"""``/api/v1/images``: list, pull, create from a VM, push, run, remove, prune."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from meda_api.background import ASYNC_RESPONSES, PreferHeader, run_or_accept
from meda_api.deps import ImageRef, MedaDep
from meda_api.routers.vms import ERRORS
from meda_core.backends import Progress
from meda_core.models import (
    CreateImageRequest,
    ImageList,
    ImageResult,
    OperationResult,
    PruneRequest,
    PruneResult,
    PullRequest,
    PushRequest,
    RunRequest,
)
from meda_core.sizes import format_size
from meda_core.views import image_info, image_list, vm_info
from meda_core.workflows import run_image

router = APIRouter(prefix="/images", tags=["images"])


@router.get("", response_model=ImageList, responses=ERRORS)
def list_images(meda: MedaDep) -> ImageList:
    return image_list(meda.images.listing())


@router.post("/pull", response_model=ImageResult, responses=ERRORS | ASYNC_RESPONSES)
def pull_image(request: PullRequest, meda: MedaDep, prefer: PreferHeader = None) -> Any:
    def work(progress: Progress) -> ImageResult:
        image = meda.images.pull(request.image, request.registry, request.org, progress)
        return ImageResult(
            success=True, message=f"Pulled {image.source}", image=image_info(image),
            digest=image.digest,
        )  # fmt: skip

    return run_or_accept(prefer, meda, "pull", work)


@router.post("", status_code=201, response_model=ImageResult, responses=ERRORS)
def create_image(request: CreateImageRequest, meda: MedaDep) -> ImageResult:
    image = meda.images.create_from_vm(
        request.from_vm, request.name, request.tag, request.registry, request.org
    )
    return ImageResult(
        success=True, message=f"Created image {image.ref} from VM {request.from_vm}",
        image=image_info(image),
    )  # fmt: skip


@router.post("/push", response_model=ImageResult, responses=ERRORS | ASYNC_RESPONSES)
def push_image(request: PushRequest, meda: MedaDep, prefer: PreferHeader = None) -> Any:
    def work(progress: Progress) -> ImageResult:
        image, digest = meda.images.push(
            request.name, request.image, request.registry, request.org, request.dry_run,
            progress,
        )  # fmt: skip
        verb = "Would push" if request.dry_run else "Pushed"
        return ImageResult(
            success=True, message=f"{verb} {image.ref} to {request.image}",
            image=image_info(image), digest=digest,
        )  # fmt: skip

    return run_or_accept(prefer, meda, "push", work)


@router.post(
    "/run", status_code=201, response_model=OperationResult, responses=ERRORS | ASYNC_RESPONSES
)
def run(request: RunRequest, meda: MedaDep, prefer: PreferHeader = None) -> Any:
    def work(progress: Progress) -> OperationResult:
        vm = run_image(meda.images, meda.vms, request, progress)
        verb = "Created" if request.no_start else "Started"
        return OperationResult(success=True, message=f"{verb} VM {vm.name} from {request.image}",
                               vm=vm_info(vm))  # fmt: skip

    return run_or_accept(prefer, meda, "run", work)


@router.delete("/{image}", response_model=ImageResult, responses=ERRORS)
def remove_image(image: ImageRef, meda: MedaDep) -> ImageResult:
    removed = meda.images.remove(image)
    return ImageResult(success=True, message=f"Removed image {removed.ref}")


@router.post("/prune", response_model=PruneResult, responses=ERRORS)
def prune(request: PruneRequest, meda: MedaDep) -> PruneResult:
    images, blobs, freed = meda.images.prune(request.all)
    return PruneResult(
        success=True, message=f"Removed {len(images)} image(s), freed {format_size(freed)}",
        removed_images=images, removed_blobs=len(blobs), freed=format_size(freed),
    )  # fmt: skip
