"""``/api/v1/health`` and ``/api/v1/plugins``."""

from __future__ import annotations

from fastapi import APIRouter

from meda_api.deps import ApiDep, MedaDep
from meda_core.models import Health, PluginReport
from meda_core.vms.capacity import Capacity, measure

router = APIRouter()


@router.get("/health", response_model=Health, tags=["system"])
def health(meda: MedaDep) -> Health:
    return meda.health()


@router.get("/capacity", response_model=Capacity, tags=["system"])
def capacity(meda: MedaDep) -> Capacity:
    """What the host can give VMs: totals, reserves and what running VMs hold."""
    return measure(meda.settings, meda.store.list_vms())


@router.get("/plugins", response_model=PluginReport, tags=["system"])
def plugins(api: ApiDep) -> PluginReport:
    return api.plugins()
