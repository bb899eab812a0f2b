"""``RemoteApi``: :class:`~meda_core.interface.calls.MedaApi` over HTTP, against a ``meda serve``.

    >>> api = RemoteApi("http://vmhost:7777", token="...")
    >>> api.create_vm(CreateVMRequest(name="demo")).message

Errors come back as the same :mod:`meda_core.errors` classes the server raised.
"""

from __future__ import annotations

import ssl
import time
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from meda_core.errors import BackendUnavailable, MedaError
from meda_core.models import (
    CleanupReport,
    CloneRequest,
    CreateImageRequest,
    CreateVMRequest,
    ImageList,
    ImageResult,
    OperationResult,
    PluginReport,
    PortForward,
    PortForwardList,
    PortForwardResult,
    Protocol,
    PruneRequest,
    PruneResult,
    PullRequest,
    PushRequest,
    RunRequest,
    RunResult,
    TemplateList,
    VMAddress,
    VMInfo,
    VMList,
)
from meda_core.state.operations import FINISHED, Operation, OperationState, Progress, no_progress

M = TypeVar("M", bound=BaseModel)
POLL_SECONDS = 0.25


def _segment(value: str) -> str:
    return quote(value, safe="")


def _stop_params(force: bool, timeout: float | None) -> dict[str, str]:
    params = {"force": "true"} if force else {}
    return params if timeout is None else {**params, "timeout": str(timeout)}


#: Seconds the CLI waits for a server to take its connection.
CONNECT_TIMEOUT = 10.0


class RemoteApi:
    """Every API call sent to the server at ``url``, with ``token`` as a bearer token.

    ``url`` may be ``unix:///path/to/socket`` for a server's Unix socket.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``ca_file``: the CA (or self-signed certificate) an HTTPS server's is checked with."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        if url.startswith("unix://"):
            socket = "/" + url.removeprefix("unix://").lstrip("/")
            transport = transport or httpx.HTTPTransport(uds=socket)
            url = "http://localhost"  # the Host a local client names
        base = url.rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        verify: ssl.SSLContext | bool = True
        if ca_file:
            verify = ssl.create_default_context(cafile=ca_file)
        # A long answer may be a pull; a server that never answers the connection is not.
        limits = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        self._http = httpx.Client(
            base_url=base, headers=headers, timeout=limits, transport=transport, verify=verify
        )

    def close(self) -> None:
        self._http.close()

    # ---- plumbing ----

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"cannot reach the meda server at {self.url}: {exc}", url=self.url
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise MedaError.from_body(body, response.status_code)
        return response

    def _call(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._send(method, path, **kwargs).json())

    def _body(self, request: BaseModel) -> dict[str, Any]:
        return {"json": request.model_dump(mode="json", exclude_unset=True)}

    def _long(self, model: type[M], path: str, request: BaseModel, progress: Progress) -> M:
        """Long work as a background operation, polled for its progress and result."""
        response = self._send(
            "POST", path, headers={"Prefer": "respond-async"}, **self._body(request)
        )
        if response.status_code != 202:  # a server that chose to answer at once
            return model.model_validate(response.json())
        op = Operation.model_validate(response.json())
        while op.state not in FINISHED:
            time.sleep(POLL_SECONDS)
            op = self._call(Operation, "GET", f"/operations/{op.id}")
            if op.bytes_total:
                progress(op.bytes_done, op.bytes_total)
        if op.state != OperationState.SUCCEEDED or op.result is None:
            raise MedaError.from_body(op.error or {"error": f"{op.kind} {op.state.value}"}, 500)
        return model.model_validate(op.result)

    # ---- VMs ----

    def list_vms(self) -> VMList:
        return self._call(VMList, "GET", "/vms")

    def create_vm(self, request: CreateVMRequest) -> OperationResult:
        return self._call(OperationResult, "POST", "/vms", **self._body(request))

    def get_vm(self, name: str) -> VMInfo:
        return self._call(VMInfo, "GET", f"/vms/{_segment(name)}")

    def start_vm(self, name: str) -> OperationResult:
        return self._call(OperationResult, "POST", f"/vms/{_segment(name)}/start")

    def stop_vm(
        self, name: str, force: bool = False, timeout: float | None = None
    ) -> OperationResult:
        path = f"/vms/{_segment(name)}/stop"
        return self._call(OperationResult, "POST", path, params=_stop_params(force, timeout))

    def delete_vm(
        self, name: str, force: bool = False, timeout: float | None = None
    ) -> OperationResult:
        path = f"/vms/{_segment(name)}"
        return self._call(OperationResult, "DELETE", path, params=_stop_params(force, timeout))

    def plan_vm(self, name: str, hypervisor: str | None = None) -> dict[str, Any]:
        params = {"hypervisor": hypervisor} if hypervisor else {}
        plan: dict[str, Any] = self._send(
            "GET", f"/vms/{_segment(name)}/plan", params=params
        ).json()
        return plan

    # ---- snapshots ----

    def snapshot_vm(self, name: str) -> OperationResult:
        return self._call(OperationResult, "POST", f"/vms/{_segment(name)}/snapshot")

    def restore_vm(self, name: str) -> OperationResult:
        return self._call(OperationResult, "POST", f"/vms/{_segment(name)}/restore")

    def clone_vm(self, source: str, request: CloneRequest) -> OperationResult:
        path = f"/vms/{_segment(source)}/clone"
        return self._call(OperationResult, "POST", path, **self._body(request))

    def list_templates(self) -> TemplateList:
        return self._call(TemplateList, "GET", "/templates")

    # ---- network ----

    def vm_ip(self, name: str) -> VMAddress:
        return self._call(VMAddress, "GET", f"/vms/{_segment(name)}/ip")

    def list_forwards(self, name: str) -> PortForwardList:
        return self._call(PortForwardList, "GET", f"/vms/{_segment(name)}/port-forward")

    def add_forward(self, name: str, forward: PortForward) -> PortForwardResult:
        path = f"/vms/{_segment(name)}/port-forward"
        return self._call(PortForwardResult, "POST", path, **self._body(forward))

    def remove_forward(self, name: str, host_port: int, protocol: Protocol) -> PortForwardResult:
        path = f"/vms/{_segment(name)}/port-forward/{host_port}"
        return self._call(PortForwardResult, "DELETE", path, params={"protocol": protocol.value})

    def cleanup_network(self, dry_run: bool) -> CleanupReport:
        params = {"dry_run": str(dry_run).lower()}
        return self._call(CleanupReport, "POST", "/network/cleanup", params=params)

    # ---- images ----

    def list_images(self) -> ImageList:
        return self._call(ImageList, "GET", "/images")

    def pull_image(self, request: PullRequest, progress: Progress = no_progress) -> ImageResult:
        return self._long(ImageResult, "/images/pull", request, progress)

    def push_image(self, request: PushRequest, progress: Progress = no_progress) -> ImageResult:
        return self._long(ImageResult, "/images/push", request, progress)

    def create_image(self, request: CreateImageRequest) -> ImageResult:
        return self._call(ImageResult, "POST", "/images", **self._body(request))

    def run_image(self, request: RunRequest, progress: Progress = no_progress) -> RunResult:
        return self._long(RunResult, "/images/run", request, progress)

    def remove_image(self, ref: str) -> ImageResult:
        return self._call(ImageResult, "DELETE", f"/images/{_segment(ref)}")

    def prune_images(self, request: PruneRequest) -> PruneResult:
        return self._call(PruneResult, "POST", "/images/prune", **self._body(request))

    # ---- system ----

    def plugins(self) -> PluginReport:
        return self._call(PluginReport, "GET", "/plugins")
