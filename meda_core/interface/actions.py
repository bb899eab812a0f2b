"""What each API operation does on a :class:`~meda_core.facade.Meda`: its core call.

Every function takes the ``Meda`` first, then the operation's parameters under their HTTP
names, and returns the operation's response model; :mod:`meda_core.interface.table`
declares which operation each one is.

The table, and so the remote client, imports this module: what only runs here (the
facade, the VM service, ``run``) is imported by the function that runs it, so a client
of a server loads no plugin system (tests/meda_cli/test_startup.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from meda_core.errors import InvalidRequest
from meda_core.inputs.choices import DEFAULT_WAIT_TIMEOUT, Archive, EventFormat
from meda_core.inputs.labels import matches, parse_filters
from meda_core.inputs.sizes import format_size
from meda_core.interface.feeds import (
    BusFeed,
    DecodedFeed,
    EventFeed,
    ReplayFeed,
    SessionFeed,
    TextFeed,
)
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
    JournalEvent,
    OperationResult,
    PluginReport,
    PortForward,
    PortForwardList,
    PortForwardResult,
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
from meda_core.models import (
    Protocol as PortProtocol,
)
from meda_core.state.operations import Operation, OperationList, Progress, no_progress
from meda_core.vms.capacity import Capacity, measure
from meda_core.vms.views import image_info, image_list, template_list, vm_info, vm_list

if TYPE_CHECKING:
    from meda_core.facade import Meda

# ---- VMs ----


def list_vms(meda: Meda, label: list[str] | None = None, state: VMState | None = None) -> VMList:
    listed = meda.vms.list_view(vm_list)
    if not label and state is None:
        return listed
    wanted = parse_filters(label or [])
    kept = [
        vm
        for vm in listed.vms
        if matches(vm.labels, wanted) and (state is None or vm.state == state)
    ]
    return VMList(vms=kept, count=len(kept))


def create_vm(meda: Meda, request: CreateVMRequest) -> OperationResult:
    vm = meda.vms.create(request)
    return OperationResult(
        success=True, message=f"Successfully created VM: {vm.name}", vm=vm_info(vm)
    )


def get_vm(meda: Meda, name: str) -> VMInfo:
    return vm_info(meda.vms.get(name))


def start_vm(meda: Meda, name: str) -> OperationResult:
    vm = meda.vms.start(name)
    return OperationResult(success=True, message=f"Started VM: {name}", vm=vm_info(vm))


def stop_vm(
    meda: Meda, name: str, force: bool = False, timeout: float | None = None
) -> OperationResult:
    from meda_core.vms.service import power_off_timeout

    seconds = power_off_timeout(force, timeout, meda.settings.stop_timeout)
    vm = meda.vms.stop(name, seconds)
    message = f"Stopped VM: {name}" + (" (forced)" if seconds == 0 else "")
    return OperationResult(success=True, message=message, vm=vm_info(vm))


def delete_vm(
    meda: Meda, name: str, force: bool = False, timeout: float | None = None
) -> OperationResult:
    from meda_core.vms.service import power_off_timeout

    meda.vms.delete(name, power_off_timeout(force, timeout, 0.0))
    return OperationResult(success=True, message=f"Deleted VM: {name}")


def wait_vm(
    meda: Meda, name: str, conditions: list[str], timeout: float = DEFAULT_WAIT_TIMEOUT
) -> VMInfo:
    """The VM once every condition holds (in this process: on an event loop of its own;
    from async code, await :func:`wait_vm_async`)."""
    return asyncio.run(wait_vm_async(meda, name, conditions, timeout))


async def wait_vm_async(
    meda: Meda, name: str, conditions: list[str], timeout: float = DEFAULT_WAIT_TIMEOUT
) -> VMInfo:
    """``wait_vm`` for an event loop: the wait holds no thread."""
    from meda_core.interface.wait import parse_conditions, wait_for

    return vm_info(await wait_for(meda, name, parse_conditions(conditions), timeout))


def plan_vm(meda: Meda, name: str, hypervisor: str | None = None) -> dict[str, Any]:
    return meda.vms.plan(name, hypervisor)


def set_ttl(meda: Meda, name: str, request: TtlRequest) -> VMInfo:
    vm = meda.vms.set_ttl(name, request.ttl)
    meda.lifecycles.poke()
    return vm_info(vm)


# ---- snapshots ----


def snapshot_vm(meda: Meda, name: str) -> OperationResult:
    vm = meda.snapshots.snapshot(name)
    assert vm.snapshot is not None
    message = (
        f"Snapshot {vm.snapshot.id} of VM {name}: "
        f"{format_size(vm.snapshot.state_bytes)} saved in {vm.snapshot.seconds:.2f}s"
    )
    return OperationResult(success=True, message=message, vm=vm_info(vm))


def restore_vm(meda: Meda, name: str) -> OperationResult:
    vm = meda.snapshots.restore(name)
    return OperationResult(success=True, message=f"Restored VM: {name}", vm=vm_info(vm))


def clone_vm(meda: Meda, name: str, request: CloneRequest) -> OperationResult:
    vm = meda.snapshots.clone(name, request.name, request)
    message = f"Cloned VM {request.name} from {name}"
    return OperationResult(success=True, message=message, vm=vm_info(vm))


def list_templates(meda: Meda) -> TemplateList:
    return template_list(meda.vms.list())


# ---- network ----


def vm_ip(meda: Meda, name: str) -> VMAddress:
    return meda.network.address(name)


def list_forwards(meda: Meda, name: str) -> PortForwardList:
    forwards = meda.network.forwards(name)
    return PortForwardList(vm=name, forwards=forwards, count=len(forwards))


def add_forward(meda: Meda, name: str, forward: PortForward) -> PortForwardResult:
    added = meda.network.add_forward(name, forward)
    message = (
        f"Forwarding host port {added.host_port}/{added.protocol.value} "
        f"to {name}:{added.guest_port}: connect to {added.address}{_in_namespace(added.netns)}"
    )
    return PortForwardResult(success=True, message=message, vm=name, forward=added)


def remove_forward(
    meda: Meda, name: str, host_port: int, protocol: PortProtocol = PortProtocol.TCP
) -> PortForwardResult:
    removed = meda.network.remove_forward(name, host_port, protocol)
    message = f"Removed forward of host port {host_port}/{protocol.value}"
    return PortForwardResult(success=True, message=message, vm=name, forward=removed)


def cleanup_network(meda: Meda, dry_run: bool = False) -> CleanupReport:
    return meda.network.cleanup(dry_run)


def _in_namespace(netns: str | None) -> str:
    return "" if netns is None else f" in network namespace {netns}"


# ---- images ----


def list_images(meda: Meda) -> ImageList:
    return image_list(meda.images.listing())


def pull_image(meda: Meda, request: PullRequest, progress: Progress = no_progress) -> ImageResult:
    image = meda.images.pull(
        request.image, request.registry, request.org, progress, request.ready_port
    )
    return ImageResult(
        success=True, message=f"Pulled {image.source}", image=image_info(image), digest=image.digest
    )


def push_image(meda: Meda, request: PushRequest, progress: Progress = no_progress) -> ImageResult:
    image, digest = meda.images.push(
        request.name, request.image, request.registry, request.org, request.dry_run, progress
    )
    verb = "Would push" if request.dry_run else "Pushed"
    return ImageResult(
        success=True,
        message=f"{verb} {image.ref} to {request.image}",
        image=image_info(image),
        digest=digest,
    )


def create_image(meda: Meda, request: CreateImageRequest) -> ImageResult:
    image = meda.images.create_from_vm(
        request.from_vm,
        request.name,
        request.tag,
        request.registry,
        request.org,
        request.ready_port,
    )
    return ImageResult(
        success=True,
        message=f"Created image {image.ref} from VM {request.from_vm}",
        image=image_info(image),
    )


def run_image(meda: Meda, request: RunRequest, progress: Progress = no_progress) -> RunResult:
    from meda_core.vms.run import run_image as run_from_image

    vm, run = run_from_image(meda.images, meda.vms, meda.warm_runs, request, progress)
    verb = "Created" if request.no_start else "Started"
    message = f"{verb} VM {vm.name} from {request.image}"
    if run.path == "warm":
        message += f" (a clone of its warm template {vm.clone_of})"
    elif not request.no_start:
        message += f" (cold start: {run.reason})"
    return RunResult(success=True, message=message, vm=vm_info(vm), run=run)


def remove_image(meda: Meda, image: str) -> ImageResult:
    removed = meda.images.remove(image)
    return ImageResult(success=True, message=f"Removed image {removed.ref}")


def prune_images(meda: Meda, request: PruneRequest) -> PruneResult:
    images, blobs, freed = meda.images.prune(request.all)
    return PruneResult(
        success=True,
        message=f"Removed {len(images)} image(s), freed {format_size(freed)}",
        removed_images=images,
        removed_blobs=len(blobs),
        freed=format_size(freed),
    )


# ---- background operations and events ----


def list_operations(meda: Meda) -> OperationList:
    return meda.operations.list()


def get_operation(meda: Meda, op_id: str, wait: float = 0) -> Operation:
    return meda.operations.wait(op_id, wait) if wait else meda.operations.get(op_id)


async def wait_operation(meda: Meda, op_id: str, wait: float = 0) -> Operation:
    """``get_operation`` for an event loop: the wait holds no thread."""
    if not wait:
        return meda.operations.get(op_id)
    return await meda.operations.wait_async(op_id, wait)


def cancel_operation(meda: Meda, op_id: str) -> Operation:
    return meda.operations.cancel(op_id)


def console(meda: Meda, name: str, tail: int | None = None, follow: bool = False) -> TextFeed:
    if not follow:
        return DecodedFeed(meda.consoles.tail(name, tail))
    first, follower = meda.consoles.follow(name, tail)
    return DecodedFeed(first, follower.read)


#: Events read from the journal at a time (a replay's page, a JSON page at most).
EVENT_PAGE = 500
#: The largest event id SQLite can hold (a larger ``since`` could never be passed).
MAX_EVENT_ID = 2**63 - 1


def events(
    meda: Meda,
    since: int | None = None,
    last_event_id: str | None = None,
    format: EventFormat = EventFormat.SSE,
    limit: int = 100,
) -> EventFeed | EventPage:
    start = _replay_from(since, last_event_id)
    if format == EventFormat.JSON:
        return _event_page(meda, start or 0, limit)
    listener = meda.events.subscribe()
    live = BusFeed(listener, lambda: meda.events.unsubscribe(listener))
    if start is None:
        return live
    return ReplayFeed(lambda after: _journal(meda, after, EVENT_PAGE), start, live)


def _replay_from(since: int | None, last_event_id: str | None) -> int | None:
    """Where a replay starts: ``since``, else the Last-Event-ID a reconnecting client sent."""
    if since is not None or last_event_id is None:
        return since
    try:
        return min(max(0, int(last_event_id)), MAX_EVENT_ID)
    except ValueError:
        raise InvalidRequest(
            f"Last-Event-ID {last_event_id[:40]!r} is not an event id", header="Last-Event-ID"
        ) from None


def _journal(meda: Meda, after: int, limit: int) -> list[dict[str, Any]]:
    return [
        {"id": event_id, "event": kind, "data": data}
        for event_id, kind, data in meda.store.journal_since(after, limit)
    ]


def _event_page(meda: Meda, since: int, limit: int) -> EventPage:
    events = [JournalEvent(**event) for event in _journal(meda, since, limit)]
    if events:
        return EventPage(events=events, count=len(events), next=events[-1].id)
    # Past the newest event: go on from there, never from ids not given out yet.
    return EventPage(events=[], count=0, next=min(since, meda.store.journal_last()))


# ---- system ----


def health(meda: Meda) -> Health:
    return meda.health()


def capacity(meda: Meda) -> Capacity:
    return measure(meda.settings, meda.store.list_vms())


def plugins(meda: Meda) -> PluginReport:
    return meda.plugin_report()


# ---- guests: exec and files ----


def _chunks(data: Iterable[bytes] | bytes) -> Iterable[bytes]:
    return [data] if isinstance(data, bytes) else data


def exec_command(meda: Meda, name: str, request: ExecRequest) -> ExecResult:
    return meda.guest.exec(name, request)


def exec_stream(meda: Meda, name: str, request: ExecRequest) -> EventFeed:
    return SessionFeed(meda.guest.start(name, request, request.timeout))


def exec_stdin(
    meda: Meda, name: str, session: str, data: Iterable[bytes] | bytes, eof: bool = False
) -> StdinResult:
    size = meda.guest.stdin(name, session, _chunks(data), eof)
    return StdinResult(session=session, size=size, eof=eof)


def put_file(
    meda: Meda,
    name: str,
    path: str,
    data: Iterable[bytes] | bytes,
    mode: str = "0644",
    owner: str | None = None,
    archive: Archive | None = None,
) -> FileResult:
    chunks = _chunks(data)
    return meda.guest.write_file(name, path, chunks, mode, owner, archive is not None)


def get_file(meda: Meda, name: str, path: str, archive: Archive | None = None) -> Iterator[bytes]:
    return meda.guest.read_file(name, path, archive is not None)
