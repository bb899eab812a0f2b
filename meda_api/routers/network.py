"""``/api/v1/vms/{name}/ip`` and ``/api/v1/vms/{name}/port-forward``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from meda_api.deps import MedaDep, VMName
from meda_api.routers.vms import ERRORS
from meda_core.models import PortForward, PortForwardList, PortForwardResult, Protocol, VMAddress

router = APIRouter(prefix="/vms/{name}", tags=["network"])


@router.get("/ip", response_model=VMAddress, responses=ERRORS)
def get_ip(name: VMName, meda: MedaDep) -> VMAddress:
    return meda.network.address(name)


@router.post("/port-forward", status_code=201, response_model=PortForwardResult, responses=ERRORS)
def add_port_forward(name: VMName, forward: PortForward, meda: MedaDep) -> PortForwardResult:
    added = meda.network.add_forward(name, forward)
    return PortForwardResult(
        success=True,
        message=f"Forwarding host port {added.host_port}/{added.protocol.value} "
        f"to {name}:{added.guest_port}",
        vm=name,
        forward=added,
    )


@router.get("/port-forward", response_model=PortForwardList, responses=ERRORS)
def list_port_forwards(name: VMName, meda: MedaDep) -> PortForwardList:
    forwards = meda.network.forwards(name)
    return PortForwardList(vm=name, forwards=forwards, count=len(forwards))


@router.delete("/port-forward/{host_port}", response_model=PortForwardResult, responses=ERRORS)
def remove_port_forward(
    name: VMName,
    host_port: Annotated[int, Path(ge=1, le=65535)],
    meda: MedaDep,
    protocol: Protocol = Protocol.TCP,
) -> PortForwardResult:
    removed = meda.network.remove_forward(name, host_port, protocol)
    return PortForwardResult(
        success=True,
        message=f"Removed forward of host port {host_port}/{protocol.value}",
        vm=name,
        forward=removed,
    )
