"""``/api/v1/vms``: VM lifecycle endpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from meda_api.deps import ApiDep, VMName
from meda_core.models import (
    CloneRequest,
    CreateVMRequest,
    ErrorBody,
    OperationResult,
    TemplateList,
    VMInfo,
    VMList,
)
from meda_core.vms.service import MAX_STOP_TIMEOUT

router = APIRouter(prefix="/vms", tags=["vms"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Invalid parameters",
        401: "A bearer token is required (servers beyond loopback)",
        404: "VM not found",
        409: "Conflict with the VM's name or state",
        413: "Request body too large",
        429: "Too many requests from this client (MEDA_RATE_LIMIT, MEDA_READ_RATE_LIMIT); "
        "see Retry-After",
        500: "Backend failure",
        503: "No usable backend",
    }.items()
}


@router.get("", response_model=VMList, responses=ERRORS)
def list_vms(api: ApiDep) -> VMList:
    return api.list_vms()


@router.post("", status_code=201, response_model=OperationResult, responses=ERRORS)
def create_vm(request: CreateVMRequest, api: ApiDep) -> OperationResult:
    return api.create_vm(request)


@router.get("/{name}", response_model=VMInfo, responses=ERRORS)
def get_vm(name: VMName, api: ApiDep) -> VMInfo:
    return api.get_vm(name)


@router.post("/{name}/start", response_model=OperationResult, responses=ERRORS)
def start_vm(name: VMName, api: ApiDep) -> OperationResult:
    return api.start_vm(name)


Force = Annotated[
    bool, Query(description="Kill the guest at once, without asking it (ACPI) to power off")
]
Timeout = Annotated[
    float | None,
    Query(
        ge=0,
        le=MAX_STOP_TIMEOUT,
        description="Seconds the guest gets to power off on ACPI before it is killed "
        "(0: at once, like force)",
    ),
]


@router.post("/{name}/stop", response_model=OperationResult, responses=ERRORS)
def stop_vm(
    name: VMName, api: ApiDep, force: Force = False, timeout: Timeout = None
) -> OperationResult:
    """Power the VM off: ACPI, then killed after ``timeout`` (default MEDA_STOP_TIMEOUT)."""
    return api.stop_vm(name, force, timeout)


@router.delete("/{name}", response_model=OperationResult, responses=ERRORS)
def delete_vm(
    name: VMName, api: ApiDep, force: Force = False, timeout: Timeout = None
) -> OperationResult:
    """Delete the VM and its disk. A running guest is killed at once (its disk is thrown
    away: a clean shutdown protects nothing) unless ``timeout`` gives it time on ACPI."""
    return api.delete_vm(name, force, timeout)


@router.get("/{name}/plan", responses=ERRORS)
def plan_vm(name: VMName, api: ApiDep, hypervisor: str | None = None) -> dict[str, Any]:
    """Dry run of start: the command line and config the hypervisor would use."""
    return api.plan_vm(name, hypervisor)


@router.post("/{name}/snapshot", response_model=OperationResult, responses=ERRORS)
def snapshot_vm(name: VMName, api: ApiDep) -> OperationResult:
    """Pause the running VM, save its memory and device state with its disk, resume it."""
    return api.snapshot_vm(name)


@router.post("/{name}/restore", response_model=OperationResult, responses=ERRORS)
def restore_vm(name: VMName, api: ApiDep) -> OperationResult:
    """Start the stopped VM from its snapshot (changes made since are dropped)."""
    return api.restore_vm(name)


@router.post("/{name}/clone", status_code=201, response_model=OperationResult, responses=ERRORS)
def clone_vm(name: VMName, request: CloneRequest, api: ApiDep) -> OperationResult:
    """A new running VM from this template's snapshot, with its own disk and address."""
    return api.clone_vm(name, request)


templates_router = APIRouter(tags=["vms"])


@templates_router.get("/templates", response_model=TemplateList, responses=ERRORS)
def list_templates(api: ApiDep) -> TemplateList:
    """VMs that can be cloned, with their snapshot and clones."""
    return api.list_templates()
