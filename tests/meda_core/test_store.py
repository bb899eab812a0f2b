from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from meda_core.errors import InvalidState, VMExists, VMNotFound
from meda_core.models import VM, VMSpec, VMState
from meda_core.state.store import StateStore


def _vm(name: str, state: VMState = VMState.STOPPED, disk_file: str = "disk.fake") -> VM:
    return VM(
        name=name,
        state=state,
        spec=VMSpec(),
        image="i:latest",
        vm_dir=Path("/x") / name,
        hypervisor="fake",
        storage="fake",
        disk_file=disk_file,
        disk_format="fake",
        created=datetime.now(UTC),
        uuid=str(uuid.uuid4()),
    )


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def test_wal_mode(store: StateStore) -> None:
    import sqlite3

    assert sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_insert_get_list_delete(store: StateStore) -> None:
    store.insert_vm(_vm("a"))
    store.insert_vm(_vm("b"))
    assert [v.name for v in store.list_vms()] == ["a", "b"]
    with pytest.raises(VMExists):
        store.insert_vm(_vm("a"))
    store.delete_vm("a")
    assert store.get_vm("a") is None
    with pytest.raises(VMNotFound):
        store.require_vm("a")


def test_transition_is_compare_and_set(store: StateStore) -> None:
    store.insert_vm(_vm("a"))
    store.transition("a", {VMState.STOPPED}, VMState.STARTING)
    with pytest.raises(InvalidState):
        store.transition("a", {VMState.STOPPED}, VMState.STARTING)
    assert store.require_vm("a").state == VMState.STARTING


def test_only_one_of_many_concurrent_transitions_wins(store: StateStore) -> None:
    store.insert_vm(_vm("a"))
    wins: list[int] = []

    def attempt(i: int) -> None:
        try:
            store.transition("a", {VMState.STOPPED}, VMState.STARTING)
            wins.append(i)
        except InvalidState:
            pass

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_failed_transaction_changes_nothing(store: StateStore) -> None:
    store.insert_vm(_vm("a"))
    with pytest.raises(VMNotFound):
        store.save_vm(_vm("missing"))
    assert [v.name for v in store.list_vms()] == ["a"]


@pytest.mark.parametrize("disk_file", ["../disk", "/etc/passwd", "a/b", ".hidden", ""])
def test_a_vm_s_disk_is_a_file_in_its_own_folder(disk_file: str) -> None:
    with pytest.raises(ValidationError, match="disk_file"):
        _vm("vm1", disk_file=disk_file)


def test_connections_are_kept_for_the_next_call(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.list_vms()
    opened: list[object] = []
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(a) or connect(*a, **k))
    for _ in range(3):
        store.list_vms()
    assert opened == []
    store.close()
    store.list_vms()
    assert len(opened) == 1


def test_a_forked_child_opens_connections_of_its_own(store: StateStore) -> None:
    store.list_vms()
    parents = {id(db) for db in store._idle}
    pid = os.fork()
    if pid == 0:  # the child: a connection shared with the parent would corrupt its locks
        with store._connect() as db:
            os._exit(0 if id(db) not in parents and store.list_vms() == [] else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert store.list_vms() == []
