"""The operation table: every operation of the API, declared once.

:class:`MedaApi` is the table: each attribute an :class:`~meda_core.interface.endpoint.Endpoint`
(method, path, success status, request and response models, documented errors, core call).
The FastAPI routes (:mod:`meda_api.routes`), the HTTP client
(:class:`~meda_core.interface.remote.RemoteApi`) and the in-process API
(:class:`~meda_core.interface.calls.LocalApi`) are made from it; nothing else lists operations.
"""

from __future__ import annotations

from typing import Any

from meda_core.inputs.choices import (
    DEFAULT_WAIT_TIMEOUT,
    MAX_CONSOLE_LINES,
    MAX_STOP_TIMEOUT,
    MAX_WAIT_CONDITIONS,
    MAX_WAIT_TIMEOUT,
    Archive,
    EventFormat,
)
from meda_core.inputs.names import IMAGE_REF_PATTERN, VM_NAME_PATTERN
from meda_core.interface import actions
from meda_core.interface.endpoint import Endpoint, Invoker, Param, endpoints
from meda_core.models import (
    CleanupReport,
    CloneRequest,
    CreateImageRequest,
    CreateVMRequest,
    EventPage,
    ExecRequest,
    ExecResult,
    FileResult,
    Health,
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
    StdinResult,
    TemplateList,
    TtlRequest,
    VMAddress,
    VMInfo,
    VMList,
    VMState,
)
from meda_core.state.operations import Operation, OperationList
from meda_core.vms.capacity import Capacity

#: What an operation may answer besides success (the error bodies of meda_core.errors).
ERRORS: dict[int, str] = {
    400: "Invalid parameters",
    401: "A bearer token is required (servers beyond loopback)",
    404: "VM not found",
    409: "Conflict with the VM's name or state",
    413: "Request body too large",
    429: "Too many requests from this client (MEDA_RATE_LIMIT, MEDA_READ_RATE_LIMIT); "
    "see Retry-After",
    500: "Backend failure",
    503: "No usable backend",
}
#: ... for an operation that holds the request open (a wait, an event stream).
HELD_ERRORS = {
    **ERRORS,
    429: "Too many requests, or waits and event streams open (MEDA_MAX_WAITS)",
}
#: ... for a wait for a VM.
WAIT_ERRORS = {
    **HELD_ERRORS,
    404: "VM not found, or deleted while it was waited for",
    408: "What it waited for did not come within the timeout (TIMEOUT; details.pending)",
    422: "for=agent where no agent can answer (NO_AGENT)",
}

#: ... for an operation that creates something: it takes an ``Idempotency-Key``.
CREATE_ERRORS = {
    **ERRORS,
    409: ERRORS[409] + ", or the first request with this Idempotency-Key still running "
    "(past MEDA_IDEMPOTENCY_WAIT; see Retry-After)",
    422: "This Idempotency-Key was used for another request (IDEMPOTENCY_MISMATCH)",
}

#: ... for an operation in a guest, through its agent.
GUEST_ERRORS = {
    **ERRORS,
    404: "VM not found (or, for stdin, no such command session of this client's)",
    409: "The VM is not running",
    413: "Body over MEDA_FILE_MAX_BYTES",
    422: "The guest has no agent that answers (NO_AGENT): waiting will not help",
}
EXEC_ERRORS = {
    **GUEST_ERRORS,
    408: "The command outlived its timeout and was killed (TIMEOUT; its output so far in details)",
}
GUEST_PATH = Param("path", str, description="Absolute path in the guest")
ARCHIVE = Param(
    "archive",
    Archive | None,
    default=None,
    description="tar: the path is a directory, sent as a tar (tar -c / tar -x in the guest)",
)

VM_NAME = Param("name", str, "path", description="VM name", pattern=VM_NAME_PATTERN)
IMAGE_REF = Param("image", str, "path", description="Image NAME[:TAG]", pattern=IMAGE_REF_PATTERN)
OP_ID = Param("op_id", str, "path")
FORCE = Param(
    "force",
    bool,
    default=False,
    description="Kill the guest at once, without asking it (ACPI) to power off",
)
TIMEOUT = Param(
    "timeout",
    float | None,
    default=None,
    ge=0,
    le=MAX_STOP_TIMEOUT,
    description="Seconds the guest gets to power off on ACPI before it is killed "
    "(0: at once, like force)",
)


def _body(model: type, name: str = "request") -> Param:
    return Param(name, model, "body")


class MedaApi(Invoker):
    """Every operation of the REST API, with its request and response models.

    Subclasses say how a call is made (:meth:`invoke`): in this process or over HTTP.
    """

    # ---- VMs ----
    list_vms = Endpoint(
        "GET",
        "/vms",
        actions.list_vms,
        "vms",
        (
            Param(
                "label",
                list[str] | None,
                default=None,
                description="Only VMs with this label: key=value, or key for any value "
                "(repeat: all must match)",
            ),
            Param("state", VMState | None, default=None, description="Only VMs in this state"),
        ),
        VMList,
        errors=ERRORS,
        store_read=True,
    )
    create_vm = Endpoint(
        "POST",
        "/vms",
        actions.create_vm,
        "vms",
        (_body(CreateVMRequest),),
        OperationResult,
        201,
        CREATE_ERRORS,
        idempotent=True,
    )
    get_vm = Endpoint(
        "GET",
        "/vms/{name}",
        actions.get_vm,
        "vms",
        (VM_NAME,),
        VMInfo,
        200,
        ERRORS,
        store_read=True,
    )
    start_vm = Endpoint(
        "POST",
        "/vms/{name}/start",
        actions.start_vm,
        "vms",
        (VM_NAME,),
        OperationResult,
        200,
        ERRORS,
    )
    stop_vm = Endpoint(
        "POST",
        "/vms/{name}/stop",
        actions.stop_vm,
        "vms",
        (VM_NAME, FORCE, TIMEOUT),
        OperationResult,
        errors=ERRORS,
        doc="Power the VM off: ACPI, then killed after ``timeout`` (default MEDA_STOP_TIMEOUT).",
    )
    delete_vm = Endpoint(
        "DELETE",
        "/vms/{name}",
        actions.delete_vm,
        "vms",
        (VM_NAME, FORCE, TIMEOUT),
        OperationResult,
        errors=ERRORS,
        doc="Delete the VM and its disk. A running guest is killed at once (its disk is thrown\n"
        "away: a clean shutdown protects nothing) unless ``timeout`` gives it time on ACPI.",
    )
    set_ttl = Endpoint(
        "POST",
        "/vms/{name}/ttl",
        actions.set_ttl,
        "vms",
        (VM_NAME, _body(TtlRequest)),
        VMInfo,
        errors=ERRORS,
        doc="Delete the VM ``ttl`` seconds from now (a new deadline, whatever it had).",
    )
    wait_vm = Endpoint(
        "GET",
        "/vms/{name}/wait",
        actions.wait_vm,
        "vms",
        (
            VM_NAME,
            Param(
                "conditions",
                list[str],
                alias="for",
                holds=True,
                description="running, stopped, ip, port:N or agent; repeat it: all must hold "
                f"together (at most {MAX_WAIT_CONDITIONS})",
            ),
            Param(
                "timeout",
                float,
                default=DEFAULT_WAIT_TIMEOUT,
                ge=0,
                le=MAX_WAIT_TIMEOUT,
                description="Seconds to wait before answering 408 (0: look once)",
            ),
        ),
        VMInfo,
        errors=WAIT_ERRORS,
        wait=actions.wait_vm_async,
        doc="The VM (as ``GET /vms/{name}``) once every ``for`` holds: ``running`` or\n"
        "``stopped`` (its state); ``ip`` (running, with an address); ``port:N`` (running, and\n"
        "a TCP connection to its port N gets through from meda's network namespace; 22: the\n"
        "SSH banner comes); ``agent`` (running, and its agent answers a ping). A stopped VM\n"
        "is waited for (it may be started). 408 ``TIMEOUT`` at the timeout, with what is\n"
        "still ``pending``; 404 at once if the VM is deleted meanwhile.",
    )
    plan_vm = Endpoint(
        "GET",
        "/vms/{name}/plan",
        actions.plan_vm,
        "vms",
        (VM_NAME, Param("hypervisor", str | None, default=None)),
        None,
        errors=ERRORS,
        doc="Dry run of start: the command line and config the hypervisor would use.",
    )
    console = Endpoint(
        "GET",
        "/vms/{name}/console",
        actions.console,
        "vms",
        (
            VM_NAME,
            Param(
                "tail",
                int | None,
                default=None,
                ge=0,
                le=MAX_CONSOLE_LINES,
                description="The last N lines only (default: all that is kept, up to "
                f"{MAX_CONSOLE_LINES} lines and 4 MiB)",
            ),
            Param(
                "follow",
                bool,
                default=False,
                holds=True,
                description="Then stream what the guest writes, until the client leaves or "
                "the VM is deleted",
            ),
        ),
        errors=HELD_ERRORS,
        stream="text/plain; charset=utf-8",
        operation_id="get_console",
        doc="The VM's serial console log as UTF-8 text (invalid bytes replaced by U+FFFD,\n"
        "nothing else changed: escape sequences included). A stopped VM's too.",
    )
    # ---- snapshots ----
    snapshot_vm = Endpoint(
        "POST",
        "/vms/{name}/snapshot",
        actions.snapshot_vm,
        "vms",
        (VM_NAME,),
        OperationResult,
        errors=ERRORS,
        doc="Pause the running VM, save its memory and device state with its disk, resume it.",
    )
    restore_vm = Endpoint(
        "POST",
        "/vms/{name}/restore",
        actions.restore_vm,
        "vms",
        (VM_NAME,),
        OperationResult,
        errors=ERRORS,
        doc="Start the stopped VM from its snapshot (changes made since are dropped).",
    )
    clone_vm = Endpoint(
        "POST",
        "/vms/{name}/clone",
        actions.clone_vm,
        "vms",
        (VM_NAME, _body(CloneRequest)),
        OperationResult,
        201,
        CREATE_ERRORS,
        doc="A new running VM from this template's snapshot, with its own disk and address.",
        idempotent=True,
    )
    list_templates = Endpoint(
        "GET",
        "/templates",
        actions.list_templates,
        "vms",
        (),
        TemplateList,
        errors=ERRORS,
        doc="VMs that can be cloned, with their snapshot and clones.",
    )
    # ---- guests: exec and files, through the guest's agent ----
    exec_command = Endpoint(
        "POST",
        "/vms/{name}/exec",
        actions.exec_command,
        "guests",
        (VM_NAME, _body(ExecRequest)),
        ExecResult,
        errors=EXEC_ERRORS,
        operation_id="exec",
        doc="Run a command in the guest to its end: its exit code and output (each stream\n"
        "cut past MEDA_EXEC_OUTPUT_MAX). ``stdin`` is its whole input.",
    )
    exec_stream = Endpoint(
        "POST",
        "/vms/{name}/exec/stream",
        actions.exec_stream,
        "guests",
        (VM_NAME, _body(ExecRequest)),
        errors={**EXEC_ERRORS, 429: HELD_ERRORS[429] + ", or MEDA_EXEC_SESSIONS_MAX commands"},
        stream="text/event-stream",
        doc="Run a command in the guest, its events as ``text/event-stream`` while it runs:\n"
        "``started`` (``session``), ``stdout``/``stderr`` (``data``, base64), then ``exit``\n"
        "(``exit_code``, ``signal``) or ``error`` (an error body; TIMEOUT past ``timeout``).\n"
        "Without ``stdin`` its input stays open for ``.../exec/{session}/stdin``. A client\n"
        "that goes away kills the command.",
    )
    exec_stdin = Endpoint(
        "POST",
        "/vms/{name}/exec/{session}/stdin",
        actions.exec_stdin,
        "guests",
        (
            VM_NAME,
            Param("session", str, "path", description="From the stream's started event"),
            Param("data", bytes, "content"),
            Param("eof", bool, default=False, description="Close its input after these bytes"),
        ),
        StdinResult,
        errors=GUEST_ERRORS,
        doc="Give a streamed command (one this client started) more input, as\n"
        "``application/octet-stream``.",
    )
    put_file = Endpoint(
        "PUT",
        "/vms/{name}/files",
        actions.put_file,
        "guests",
        (
            VM_NAME,
            GUEST_PATH,
            Param("data", bytes, "content"),
            Param(
                "mode",
                str,
                default="0644",
                description="Octal permissions",
                pattern=r"^[0-7]{1,4}$",
            ),
            Param("owner", str | None, default=None, description="uid:gid", pattern=r"^\d+:\d+$"),
            ARCHIVE,
        ),
        FileResult,
        201,
        errors=GUEST_ERRORS,
        doc="Write the body (``application/octet-stream``, streamed, at most\n"
        "MEDA_FILE_MAX_BYTES) to the guest file ``path``, replaced whole; with\n"
        "``archive=tar``, unpack it into the directory ``path`` (made if missing).",
    )
    get_file = Endpoint(
        "GET",
        "/vms/{name}/files",
        actions.get_file,
        "guests",
        (VM_NAME, GUEST_PATH, ARCHIVE),
        errors=GUEST_ERRORS,
        download="application/octet-stream",
        doc="The guest file ``path``'s bytes, streamed; with ``archive=tar``, the directory\n"
        "``path`` as a tar.",
    )
    # ---- network ----
    vm_ip = Endpoint(
        "GET",
        "/vms/{name}/ip",
        actions.vm_ip,
        "network",
        (VM_NAME,),
        VMAddress,
        errors=ERRORS,
        operation_id="get_ip",
    )
    add_forward = Endpoint(
        "POST",
        "/vms/{name}/port-forward",
        actions.add_forward,
        "network",
        (VM_NAME, _body(PortForward, "forward")),
        PortForwardResult,
        201,
        CREATE_ERRORS,
        operation_id="add_port_forward",
        idempotent=True,
    )
    list_forwards = Endpoint(
        "GET",
        "/vms/{name}/port-forward",
        actions.list_forwards,
        "network",
        (VM_NAME,),
        PortForwardList,
        errors=ERRORS,
        operation_id="list_port_forwards",
    )
    remove_forward = Endpoint(
        "DELETE",
        "/vms/{name}/port-forward/{host_port}",
        actions.remove_forward,
        "network",
        (
            VM_NAME,
            Param("host_port", int, "path", ge=1, le=65535),
            Param("protocol", Protocol, default=Protocol.TCP),
        ),
        PortForwardResult,
        errors=ERRORS,
        operation_id="remove_port_forward",
    )
    cleanup_network = Endpoint(
        "POST",
        "/network/cleanup",
        actions.cleanup_network,
        "network",
        (Param("dry_run", bool, default=False),),
        CleanupReport,
        errors=ERRORS,
        doc="Find, and unless ``dry_run`` remove, network resources no VM owns.",
    )
    # ---- images ----
    list_images = Endpoint(
        "GET", "/images", actions.list_images, "images", (), ImageList, errors=ERRORS
    )
    pull_image = Endpoint(
        "POST",
        "/images/pull",
        actions.pull_image,
        "images",
        (_body(PullRequest),),
        ImageResult,
        errors=CREATE_ERRORS,
        background="pull",
        idempotent=True,
    )
    create_image = Endpoint(
        "POST",
        "/images",
        actions.create_image,
        "images",
        (_body(CreateImageRequest),),
        ImageResult,
        201,
        CREATE_ERRORS,
        idempotent=True,
    )
    push_image = Endpoint(
        "POST",
        "/images/push",
        actions.push_image,
        "images",
        (_body(PushRequest),),
        ImageResult,
        errors=ERRORS,
        background="push",
    )
    run_image = Endpoint(
        "POST",
        "/images/run",
        actions.run_image,
        "images",
        (_body(RunRequest),),
        RunResult,
        201,
        CREATE_ERRORS,
        operation_id="run",
        background="run",
        idempotent=True,
    )
    remove_image = Endpoint(
        "DELETE",
        "/images/{image}",
        actions.remove_image,
        "images",
        (IMAGE_REF,),
        ImageResult,
        errors=ERRORS,
    )
    prune_images = Endpoint(
        "POST",
        "/images/prune",
        actions.prune_images,
        "images",
        (_body(PruneRequest),),
        PruneResult,
        errors=ERRORS,
        operation_id="prune",
    )
    # ---- background operations and events ----
    list_operations = Endpoint(
        "GET", "/operations", actions.list_operations, "operations", (), OperationList
    )
    get_operation = Endpoint(
        "GET",
        "/operations/{op_id}",
        actions.get_operation,
        "operations",
        (
            OP_ID,
            Param(
                "wait",
                float,
                default=0,
                ge=0,
                le=300,
                holds=True,
                description="Seconds to wait for the end",
            ),
        ),
        Operation,
        errors=HELD_ERRORS,
        wait=actions.wait_operation,
    )
    cancel_operation = Endpoint(
        "DELETE",
        "/operations/{op_id}",
        actions.cancel_operation,
        "operations",
        (OP_ID,),
        Operation,
        errors=ERRORS,
    )
    events = Endpoint(
        "GET",
        "/events",
        actions.events,
        "operations",
        (
            Param(
                "since",
                int | None,
                default=None,
                ge=0,
                le=actions.MAX_EVENT_ID,
                description="Replay the journal's events after this id first",
            ),
            Param(
                "last_event_id",
                str | None,
                "header",
                default=None,
                alias="Last-Event-ID",
                description="What a reconnecting EventSource sends: as since",
            ),
            Param(
                "format",
                EventFormat,
                default=EventFormat.SSE,
                ends=(EventFormat.JSON,),
                description="json: one page of the journal (since, limit), not a stream",
            ),
            Param("limit", int, default=100, ge=1, le=actions.EVENT_PAGE),
        ),
        errors=HELD_ERRORS,
        stream="text/event-stream",
        page=EventPage,
        doc="VM lifecycle and operation events as ``text/event-stream``, each with an\n"
        "increasing ``id`` and, for VMs, a ``reason`` (request, policy, failure, guest,\n"
        "recovery). With ``format=json``: a page of the journal, ``EventPage``.",
    )
    # ---- system ----
    health = Endpoint("GET", "/health", actions.health, "system", (), Health)
    capacity = Endpoint(
        "GET",
        "/capacity",
        actions.capacity,
        "system",
        (),
        Capacity,
        doc="What the host can give VMs: totals, reserves and what running VMs hold.",
    )
    plugins = Endpoint("GET", "/plugins", actions.plugins, "system", (), PluginReport)


#: The table, in declaration order (the order of the OpenAPI document's paths).
TABLE: list[Endpoint[Any, Any]] = endpoints(MedaApi)
