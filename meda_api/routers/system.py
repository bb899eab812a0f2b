"""``/api/v1/health``, ``/api/v1/plugins`` and ``/api/v1/images`` (listing)."""

from __future__ import annotations

from fastapi import APIRouter

from meda_api.deps import MedaDep
from meda_core.models import Health, ImageList, PluginReport
from meda_core.views import image_list

router = APIRouter()


@router.get("/health", response_model=Health, tags=["system"])
def health(meda: MedaDep) -> Health:
    return meda.health()


@router.get("/plugins", response_model=PluginReport, tags=["system"])
def plugins(meda: MedaDep) -> PluginReport:
    return meda.plugin_report()


@router.get("/images", response_model=ImageList, tags=["images"])
def list_images(meda: MedaDep) -> ImageList:
    return image_list(meda.images.list())
