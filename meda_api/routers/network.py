"""``/api/v1/vms/{name}/ip``, ``/api/v1/vms/{name}/port-forward`` and
``/api/v1/network/cleanup``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from meda_api.deps import ApiDep, VMName
from meda_api.routers.vms import ERRORS
from meda_core.models import (
    CleanupReport,
    PortForward,
    PortForwardList,
    PortForwardResult,
    Protocol,
    VMAddress,
)

router = APIRouter(tags=["network"])
HostPort = Annotated[int, Path(ge=1, le=65535)]


@router.get("/vms/{name}/ip", response_model=VMAddress, responses=ERRORS)
def get_ip(name: VMName, api: ApiDep) -> VMAddress:
    return api.vm_ip(name)


@router.post(
    "/vms/{name}/port-forward",
    status_code=201,
    response_model=PortForwardResult,
    responses=ERRORS,
)
def add_port_forward(name: VMName, forward: PortForward, api: ApiDep) -> PortForwardResult:
    return api.add_forward(name, forward)


@router.get("/vms/{name}/port-forward", response_model=PortForwardList, responses=ERRORS)
def list_port_forwards(name: VMName, api: ApiDep) -> PortForwardList:
    return api.list_forwards(name)


@router.delete(
    "/vms/{name}/port-forward/{host_port}", response_model=PortForwardResult, responses=ERRORS
)
def remove_port_forward(
    name: VMName, host_port: HostPort, api: ApiDep, protocol: Protocol = Protocol.TCP
) -> PortForwardResult:
    return api.remove_forward(name, host_port, protocol)


@router.post("/network/cleanup", response_model=CleanupReport, responses=ERRORS)
def cleanup_network(api: ApiDep, dry_run: bool = False) -> CleanupReport:
    """Find, and unless ``dry_run`` remove, network resources no VM owns."""
    return api.cleanup_network(dry_run)
