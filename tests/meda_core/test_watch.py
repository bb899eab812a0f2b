"""The watcher: what changes under meda reaches the store by events, and reads only read."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meda_core.facade import Meda
from meda_core.host import processes as procs
from meda_core.models import VM, PortForward, VMState
from meda_core.testing.fakes import FakeHypervisor

MakeVM = Callable[..., VM]


def _eventually(check: Callable[[], bool], timeout: float = 1.0) -> float:
    """Seconds until ``check`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not within the time allowed"
        time.sleep(0.01)
    return time.monotonic() - started


def _state(meda: Meda, name: str) -> VMState | None:
    """The state as the store has it: no read through the VM service."""
    vm = meda.store.get_vm(name)
    return None if vm is None else vm.state


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def watched(fake_meda: Meda) -> Iterator[Meda]:
    fake_meda.watch()
    yield fake_meda
    fake_meda.unwatch()


def test_a_guest_whose_process_exits_is_stopped_without_a_read(
    watched: Meda, make_vm: MakeVM
) -> None:
    make_vm("vm1")
    runtime = watched.vms.start("vm1").runtime
    assert runtime is not None
    events = watched.events.subscribe()
    _eventually(lambda: "vm1" in watched._watcher.watched())  # type: ignore[union-attr]
    os.kill(runtime.pid, 9)  # left unreaped: the fake reaps it when meda asks
    _eventually(lambda: _state(watched, "vm1") == VMState.STOPPED)
    event = events.get(timeout=1)
    assert (event["data"]["kind"], event["data"]["vm"]) == ("stopped", "vm1")
    assert watched.store.require_vm("vm1").runtime is None
    assert "vm1" not in watched._watcher.watched()  # type: ignore[union-attr]


def test_an_operation_whose_owner_dies_is_recovered_without_a_read(
    watched: Meda, make_vm: MakeVM
) -> None:
    make_vm("vm1")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        taken = procs.identify(owner.pid)
        watched.store.transition("vm1", {VMState.STOPPED}, VMState.STARTING, owner=taken)
        watched._watcher.poke()  # type: ignore[union-attr]  # as a VM event would
        _eventually(lambda: watched._watcher.watched().get("vm1") == owner.pid)  # type: ignore[union-attr]
        assert _state(watched, "vm1") == VMState.STARTING  # a live owner is left alone
    finally:
        owner.kill()
        owner.wait()
    _eventually(lambda: _state(watched, "vm1") == VMState.STOPPED)


@pytest.mark.parametrize("meda_settings", [{"reconcile_interval": 0.2}], indirect=True)
def test_what_has_no_process_to_watch_is_settled_at_the_interval(
    watched: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeHypervisor, "watched_process", lambda self, runtime: None)
    make_vm("vm1")
    runtime = watched.vms.start("vm1").runtime
    assert runtime is not None
    assert watched._watcher.watched() == {}  # type: ignore[union-attr]
    os.kill(runtime.pid, 9)
    _eventually(lambda: _state(watched, "vm1") == VMState.STOPPED)


def test_reads_while_watched_never_ask_the_host(
    watched: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_vm("vm1")
    watched.vms.start("vm1")
    _eventually(lambda: "vm1" in watched._watcher.watched())  # type: ignore[union-attr]
    asked: list[str] = []  # from here on, only a read could ask (no sweep within 5 s)
    monkeypatch.setattr(procs, "is_alive", lambda runtime: asked.append("is_alive") or True)
    assert [vm.state for vm in watched.vms.list()] == [VMState.RUNNING]
    assert watched.vms.get("vm1").state == VMState.RUNNING
    assert asked == []
    watched.unwatch()  # without a watcher, a read reconciles
    watched.vms.get("vm1")
    assert asked == ["is_alive"]
    watched.watch()


def test_watching_stops_on_delete_and_leaves_nothing_open(fake_meda: Meda, make_vm: MakeVM) -> None:
    make_vm("vm1")
    fake_meda.vms.start("vm1")
    fake_meda.store.close()  # the store's own connections are not the watcher's
    before = _open_fds()
    watcher = fake_meda.watch()
    assert fake_meda.vms.watched
    _eventually(lambda: "vm1" in watcher.watched())
    fake_meda.vms.delete("vm1")
    _eventually(lambda: watcher.watched() == {})
    fake_meda.unwatch()
    assert not fake_meda.vms.watched
    fake_meda.store.close()
    assert _open_fds() == before  # pidfds, the wake-up pipe
    assert "meda-watcher" not in {thread.name for thread in threading.enumerate()}


def test_a_list_is_two_queries_whatever_the_number_of_vms(
    fake_meda: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.set_trace_callback(mine)
        return db

    def mine(statement: str) -> None:  # the watcher and the lifecycle thread read too
        if threading.get_ident() == test_thread:
            statements.append(statement)

    test_thread = threading.get_ident()

    monkeypatch.setattr(sqlite3, "connect", traced)
    fake_meda.store.close()  # connections opened from here on are traced

    def selects(read: Callable[[], object]) -> int:
        statements.clear()
        read()
        return sum(s.lstrip().upper().startswith("SELECT") for s in statements)

    def queries() -> tuple[int, int, int]:
        fake_meda.watch()
        watched = selects(fake_meda.vms.list), selects(lambda: fake_meda.vms.get("vm0"))
        fake_meda.unwatch()
        return (*watched, selects(fake_meda.vms.list))

    make_vm("vm0")
    fake_meda.store.add_forward("vm0", PortForward(host_port=2000, guest_port=22))
    one = queries()
    for i in range(1, 6):
        make_vm(f"vm{i}")
        fake_meda.store.add_forward(f"vm{i}", PortForward(host_port=2000 + i, guest_port=22))
    # Not one more query per VM. A watched list may find the records parsed already by a
    # thread of the server that listed them first (then it queries nothing).
    for watched_list, get, unwatched_list in (one, queries()):
        assert watched_list in (0, 2) and (get, unwatched_list) == (2, 2)
    listed = {vm.name: vm.port_forwards for vm in fake_meda.vms.list()}
    assert listed["vm3"] == [PortForward(host_port=2003, guest_port=22)]


def test_a_list_with_nothing_written_since_reads_no_rows_yet_sees_any_writer(
    fake_meda: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list's records are parsed again only after a commit, whoever made it (another
    process writes with a connection of its own, as this raw one does)."""
    make_vm("vm1")
    store = fake_meda.store
    first = store.list_vms_with_forwards()
    parsed: list[str] = []
    validate = VM.model_validate_json
    monkeypatch.setattr(
        VM, "model_validate_json", lambda data: parsed.append(data) or validate(data)
    )
    again = store.list_vms_with_forwards()
    assert parsed == [] and again == first and again[0] is not first[0]
    again[0].port_forwards.append(PortForward(host_port=1, guest_port=1))  # a copy: the
    assert store.list_vms_with_forwards()[0].port_forwards == []  # cache is not changed
    with sqlite3.connect(store.path) as other:
        other.execute("UPDATE vms SET data = json_set(data, '$.state', 'error')")
    assert store.list_vms_with_forwards()[0].state == VMState.ERROR
    assert len(parsed) == 1


def test_a_watched_list_view_is_made_once_per_change(watched: Meda, make_vm: MakeVM) -> None:
    made: list[int] = []

    def view(vms: list[VM]) -> list[str]:
        made.append(len(vms))
        return [vm.name for vm in vms]

    make_vm("vm1")
    first = watched.vms.list_view(view)
    assert watched.vms.list_view(view) is first and made == [1]
    make_vm("vm2")
    assert watched.vms.list_view(view) == ["vm1", "vm2"] and made == [1, 2]
    watched.unwatch()  # a meda not watched makes it at every call
    watched.vms.list_view(view)
    watched.vms.list_view(view)
    assert made == [1, 2, 2, 2]
    watched.watch()


def test_a_watch_that_cannot_open_a_pidfd_leaves_the_vm_to_the_sweep(
    fake_meda: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No descriptor to spare (a client holding every file open): the watcher goes on,
    and the VM is still settled, by the sweep."""
    fake_meda.settings.reconcile_interval = 0.2
    make_vm("vm1")
    runtime = fake_meda.vms.start("vm1").runtime
    assert runtime is not None

    def no_descriptors(pid: int, flags: int = 0) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", no_descriptors)
    fake_meda.watch()
    try:
        os.kill(runtime.pid, 9)
        _eventually(lambda: _state(fake_meda, "vm1") == VMState.STOPPED, timeout=3)
        assert fake_meda.vms.watched
    finally:
        fake_meda.unwatch()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_reads_reconcile_again_if_the_watcher_ever_ends(
    fake_meda: Meda, make_vm: MakeVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_vm("vm1")
    watcher = fake_meda.watch()
    assert fake_meda.vms.watched

    def broken(self: Any, next_sweep: float) -> float:
        raise SystemExit  # not an Exception: what the per-turn guard lets through

    monkeypatch.setattr(type(watcher), "_turn", broken)
    watcher.poke()
    _eventually(lambda: not fake_meda.vms.watched)
    fake_meda.unwatch()


def test_a_settle_for_an_ended_run_leaves_a_later_run_alone(
    fake_meda: Meda, make_vm: MakeVM
) -> None:
    """A reconcile that read the record before a stop and a start must not tear down the
    new run: the record is claimed for the very run whose process ended."""
    make_vm("vm1")
    fake_meda.vms.start("vm1")
    stale = fake_meda.store.require_vm("vm1")
    assert stale.runtime is not None
    fake_meda.vms.stop("vm1", 0)
    fresh = fake_meda.vms.start("vm1").runtime
    assert fresh is not None and fresh != stale.runtime
    settled = fake_meda.vms._reconcile(stale)
    assert settled is not None and settled.state == VMState.RUNNING
    after = fake_meda.store.require_vm("vm1")
    assert after.state == VMState.RUNNING and after.runtime == fresh
    assert procs.is_alive(fresh)
    assert (after.vm_dir / "fake.pid").exists()  # the new run's files were not cleaned up
