"""``/api/v1/images``: list, pull, create from a VM, push, run, remove, prune."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter

from meda_api.background import ASYNC_RESPONSES, PreferHeader, run_or_accept
from meda_api.deps import ApiDep, ImageRef, MedaDep
from meda_api.routers.vms import ERRORS
from meda_core.models import (
    CreateImageRequest,
    ImageList,
    ImageResult,
    PruneRequest,
    PruneResult,
    PullRequest,
    PushRequest,
    RunRequest,
    RunResult,
)

router = APIRouter(prefix="/images", tags=["images"])
LONG = ERRORS | ASYNC_RESPONSES


@router.get("", response_model=ImageList, responses=ERRORS)
def list_images(api: ApiDep) -> ImageList:
    return api.list_images()


@router.post("/pull", response_model=ImageResult, responses=LONG)
def pull_image(
    request: PullRequest, api: ApiDep, meda: MedaDep, prefer: PreferHeader = None
) -> Any:
    return run_or_accept(prefer, meda, "pull", partial(api.pull_image, request))


@router.post("", status_code=201, response_model=ImageResult, responses=ERRORS)
def create_image(request: CreateImageRequest, api: ApiDep) -> ImageResult:
    return api.create_image(request)


@router.post("/push", response_model=ImageResult, responses=LONG)
def push_image(
    request: PushRequest, api: ApiDep, meda: MedaDep, prefer: PreferHeader = None
) -> Any:
    return run_or_accept(prefer, meda, "push", partial(api.push_image, request))


@router.post("/run", status_code=201, response_model=RunResult, responses=LONG)
def run(request: RunRequest, api: ApiDep, meda: MedaDep, prefer: PreferHeader = None) -> Any:
    return run_or_accept(prefer, meda, "run", partial(api.run_image, request))


@router.delete("/{image}", response_model=ImageResult, responses=ERRORS)
def remove_image(image: ImageRef, api: ApiDep) -> ImageResult:
    return api.remove_image(image)


@router.post("/prune", response_model=PruneResult, responses=ERRORS)
def prune(request: PruneRequest, api: ApiDep) -> PruneResult:
    return api.prune_images(request)
