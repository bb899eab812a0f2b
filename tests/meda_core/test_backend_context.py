"""Backends get narrow views of meda's state: leases and read-only records, not the store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from meda_core.backends.roles import Backend, BackendContext
from meda_core.errors import Conflict
from meda_core.facade import Meda
from meda_core.models import VM, PortForward, VMSpec, VMState
from meda_core.state.store import StateStore

#: What changes a VM, an image or a forward: only the core's services may call these.
STORE_WRITES = {
    "insert_vm",
    "save_vm",
    "transition",
    "delete_vm",
    "insert_image",
    "put_image",
    "delete_image",
    "add_forward",
    "remove_forwards",
}


def _reachable(root: object, depth: int = 3) -> Iterator[tuple[str, object]]:
    """``(path, object)`` for every public attribute reachable from ``root`` (models,
    such as the settings, are data: their attributes are not followed)."""
    seen: set[int] = set()
    todo: list[tuple[str, object, int]] = [("context", root, depth)]
    while todo:
        path, obj, left = todo.pop()
        if id(obj) in seen or isinstance(obj, str | int | float | bool | bytes | Path):
            continue
        seen.add(id(obj))
        yield path, obj
        if left == 0 or isinstance(obj, BaseModel):
            continue
        for name in dir(obj):
            if name.startswith("_"):
                continue
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            todo.append((f"{path}.{name}", value, left - 1))


def _check_narrow(context: BackendContext) -> None:
    for path, obj in _reachable(context):
        assert not isinstance(obj, StateStore), f"{path} is the state store"
        assert path.rsplit(".", 1)[-1] not in STORE_WRITES, f"a backend reaches {path}"


def test_backends_of_a_meda_cannot_reach_the_store_writes(fake_meda: Meda) -> None:
    backends: list[Backend] = [fake_meda.backends.hypervisor(), fake_meda.backends.storage()]
    network = fake_meda.backends.network()
    assert network is not None
    for backend in [*backends, network]:
        _check_narrow(backend.context)


def test_the_fixture_context_is_as_narrow(backend_context: BackendContext) -> None:
    _check_narrow(backend_context)


def test_the_check_finds_a_store_handed_over(backend_context: BackendContext) -> None:
    """The check itself can fail: a context that exposes the store is caught."""

    class Leaky:
        def __init__(self, store: StateStore) -> None:
            self.store = store

    store = StateStore(backend_context.settings.db_path)
    leaky = BackendContext(backend_context.settings, Leaky(store), backend_context.vms)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="state store"):
        _check_narrow(leaky)


def test_the_lease_book_keeps_one_lease_per_vm_and_distinct_macs(
    backend_context: BackendContext,
) -> None:
    leases = backend_context.leases
    macs = iter(["02:00:00:00:00:01", "02:00:00:00:00:01", "02:00:00:00:00:02"])
    first = leases.allocate("net0", "a", ["10.0.0.2", "10.0.0.3"], lambda: next(macs))
    assert leases.allocate("net0", "a", ["10.0.0.9"], lambda: "unused") == first
    other = leases.allocate("net1", "b", ["10.0.0.2"], lambda: next(macs))
    assert other.ip == "10.0.0.2" and other.mac == "02:00:00:00:00:02"
    assert leases.find("net0", "a") == first and leases.find("net0", "b") is None
    assert [lease.vm for lease in leases.all("net0")] == ["a"]
    with pytest.raises(Conflict, match="no free address"):
        leases.allocate("net0", "c", ["10.0.0.2"], lambda: "02:00:00:00:00:09")
    leases.release("net0", "a")
    leases.release("net0", "a")  # nothing left: no error
    assert leases.all("net0") == [] and leases.find("net1", "b") == other


def test_the_vm_view_reads_records_and_changes_none(backend_context: BackendContext) -> None:
    store = StateStore(backend_context.settings.db_path)
    settings = backend_context.settings
    vm = VM(
        name="seen",
        state=VMState.STOPPED,
        spec=VMSpec(),
        image="img:latest",
        vm_dir=settings.vms_dir / "seen",
        hypervisor="fake",
        storage="fake",
        disk_file="disk.fake",
        disk_format="fake",
        created=datetime.now(UTC),
        uuid="u",
    )
    store.insert_vm(vm)
    store.add_forward("seen", PortForward(host_port=8080, guest_port=80))
    view = backend_context.vms
    assert [v.name for v in view.list_vms()] == ["seen"]
    assert view.forwards() == [("seen", PortForward(host_port=8080, guest_port=80))]
    copy = view.get_vm("seen")
    assert copy is not None and view.get_vm("missing") is None
    copy.state = VMState.ERROR
    assert store.require_vm("seen").state == VMState.STOPPED
