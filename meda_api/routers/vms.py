"""``/api/v1/vms``: VM lifecycle endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from meda_api.deps import MedaDep, VMName
from meda_core.models import CreateVMRequest, ErrorBody, OperationResult, VMInfo, VMList
from meda_core.views import vm_info, vm_list

router = APIRouter(prefix="/vms", tags=["vms"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Invalid parameters",
        404: "VM not found",
        409: "Conflict with the VM's name or state",
        500: "Backend failure",
        503: "No usable backend",
    }.items()
}


@router.get("", response_model=VMList, responses=ERRORS)
def list_vms(meda: MedaDep) -> VMList:
    return vm_list(meda.vms.list())


@router.post("", status_code=201, response_model=OperationResult, responses=ERRORS)
def create_vm(request: CreateVMRequest, meda: MedaDep) -> OperationResult:
    vm = meda.vms.create(request)
    return OperationResult(
        success=True, message=f"Successfully created VM: {vm.name}", vm=vm_info(vm)
    )


@router.get("/{name}", response_model=VMInfo, responses=ERRORS)
def get_vm(name: VMName, meda: MedaDep) -> VMInfo:
    return vm_info(meda.vms.get(name))


@router.post("/{name}/start", response_model=OperationResult, responses=ERRORS)
def start_vm(name: VMName, meda: MedaDep) -> OperationResult:
    vm = meda.vms.start(name)
    return OperationResult(success=True, message=f"Started VM: {name}", vm=vm_info(vm))


@router.post("/{name}/stop", response_model=OperationResult, responses=ERRORS)
def stop_vm(name: VMName, meda: MedaDep) -> OperationResult:
    vm = meda.vms.stop(name)
    return OperationResult(success=True, message=f"Stopped VM: {name}", vm=vm_info(vm))


@router.delete("/{name}", response_model=OperationResult, responses=ERRORS)
def delete_vm(name: VMName, meda: MedaDep) -> OperationResult:
    meda.vms.delete(name)
    return OperationResult(success=True, message=f"Deleted VM: {name}")


@router.get("/{name}/plan", responses=ERRORS)
def plan_vm(name: VMName, meda: MedaDep, hypervisor: str | None = None) -> dict[str, Any]:
    """Dry run of start: the command line and config the hypervisor would use."""
    return meda.vms.plan(name, hypervisor)
