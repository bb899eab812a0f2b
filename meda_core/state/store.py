"""The state store: VMs and images in embedded SQLite (WAL, one transaction per change)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from meda_core.errors import Conflict, InvalidState, VMExists, VMNotFound
from meda_core.models import (
    VM,
    Image,
    Lifecycle,
    PortForward,
    Protocol,
    RuntimeInfo,
    VMState,
)
from meda_core.state import migrations

T = TypeVar("T")

#: Connections kept open for the next call (more are opened while more threads need one).
IDLE_CONNECTIONS = 4


@dataclass(frozen=True)
class Lease:
    network: str
    ip: str
    vm: str
    mac: str


class StateStore:
    """Typed access to the SQLite database under ``MEDA_HOME``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)  # SQLite gives its -wal and -shm files the database's mode
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._version_db: sqlite3.Connection | None = None
        self._listed: tuple[int, list[VM]] | None = None
        self._views: dict[Callable[[list[VM]], Any], tuple[int, Any]] = {}
        db = self._open()  # not pooled: a migration may put a new file in its place
        try:
            db.execute("PRAGMA journal_mode=WAL")
            self.upgraded_from = migrations.upgrade(db, path)
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """An idle connection, or a new one; kept for the next call unless enough are idle.

        Opening one costs more than most queries. A connection left inside a transaction
        (its rollback failed) is closed, never reused; a forked child opens its own."""
        with self._lock:
            self._after_fork()
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._open()
        try:
            yield db
        finally:
            self._release(db)

    def _release(self, db: sqlite3.Connection) -> None:
        with self._lock:
            mine = self._pid == os.getpid()
            if mine and not db.in_transaction and len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(db)
                return
        db.close()

    def _after_fork(self) -> None:
        """In a forked child, leave the parent's connections alone (SQLite's are not to be
        shared across a fork) and open new ones. Called with the lock held."""
        if self._pid != os.getpid():
            self._idle, self._version_db, self._listed, self._views = [], None, None, {}
            self._pid = os.getpid()

    def close(self) -> None:
        """Close the connections kept open (the store opens new ones if used again)."""
        with self._lock:
            idle, self._idle = self._idle, []
            version_db, self._version_db = self._version_db, None
        for db in [*idle, *([version_db] if version_db else [])]:
            db.close()

    def _data_version(self) -> int:
        """A number that changes whenever any connection, of any process, commits a change:
        SQLite's ``data_version`` on a connection that itself never writes."""
        with self._lock:
            self._after_fork()
            if self._version_db is None:
                self._version_db = self._open()
            version: int = self._version_db.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A connection whose queries see one snapshot of the database."""
        return self._transaction("BEGIN")

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A connection inside a write transaction, for the store's companion modules
        (:mod:`meda_core.state.idempotency`): committed at the end, rolled back on an error."""
        return self._transaction()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """A connection inside a transaction: committed at the end, rolled back on an error.
        ``BEGIN IMMEDIATE`` (the default) takes the write lock at once."""
        with self._connect() as db:
            db.execute(begin)
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- VMs ----

    def insert_vm(self, vm: VM, admit: Callable[[], None] | None = None) -> None:
        """Add a new VM; :class:`VMExists` if the name is taken. ``admit`` runs inside
        the transaction and may refuse."""
        try:
            with self._transaction() as db:
                if admit is not None:
                    admit()
                db.execute(
                    "INSERT INTO vms (name, state, data) VALUES (?, ?, ?)",
                    (vm.name, vm.state.value, vm.model_dump_json()),
                )
        except sqlite3.IntegrityError:
            raise VMExists(vm.name) from None

    def get_vm(self, name: str) -> VM | None:
        with self._connect() as db:
            row = db.execute("SELECT data FROM vms WHERE name = ?", (name,)).fetchone()
        return VM.model_validate_json(row[0]) if row else None

    def require_vm(self, name: str) -> VM:
        vm = self.get_vm(name)
        if vm is None:
            raise VMNotFound(name)
        return vm

    def list_vms(self) -> list[VM]:
        with self._connect() as db:
            rows = db.execute("SELECT data FROM vms ORDER BY name").fetchall()
        return [VM.model_validate_json(row[0]) for row in rows]

    def list_vms_with_forwards(self) -> list[VM]:
        """Every VM with its port forwards: two queries on one connection, whatever the
        number of VMs, and none while nothing was written since the last list (the
        records parsed then are handed out again, as copies)."""
        return [_copy(vm) for vm in self._listed_vms()[1]]

    def view_of_vms(self, view: Callable[[list[VM]], T]) -> T:
        """``view`` of every VM with its port forwards, made once per change to the store
        and shared by every caller until the next: ``view`` must not change the VMs it is
        given, nor its callers what it returns (a response rendered from them, say)."""
        version, vms = self._listed_vms()
        made = self._views.get(view)
        if made is None or made[0] != version:
            made = self._views[view] = (version, view(vms))
        shared: T = made[1]
        return shared

    def _listed_vms(self) -> tuple[int, list[VM]]:
        """The parsed VMs, read again only when any connection committed since."""
        version, listed = self._data_version(), self._listed
        if listed is None or listed[0] != version:
            with self._reading() as db:
                rows = db.execute("SELECT data FROM vms ORDER BY name").fetchall()
                query = _FORWARDS + " ORDER BY host_port, protocol"
                forwards = _forwards_by_vm(db.execute(query))
            vms = [_with_forwards(VM.model_validate_json(row[0]), forwards) for row in rows]
            listed = self._listed = (version, vms)
        return listed

    def require_vm_with_forwards(self, name: str) -> VM:
        """One VM with its port forwards (:class:`VMNotFound` if there is none)."""
        with self._reading() as db:
            row = db.execute("SELECT data FROM vms WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise VMNotFound(name)
            query = _FORWARDS + " WHERE vm = ? ORDER BY host_port, protocol"
            forwards = _forwards_by_vm(db.execute(query, (name,)))
        return _with_forwards(VM.model_validate_json(row[0]), forwards)

    def add_forwards(self, vms: list[VM]) -> list[VM]:
        """``vms``, each given its port forwards (one query)."""
        with self._connect() as db:
            forwards = _forwards_by_vm(db.execute(_FORWARDS + " ORDER BY host_port, protocol"))
        return [_with_forwards(vm, forwards) for vm in vms]

    def save_vm(self, vm: VM) -> None:
        """Overwrite the stored record of an existing VM."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE vms SET state = ?, data = ? WHERE name = ?",
                (vm.state.value, vm.model_dump_json(), vm.name),
            )
            if cursor.rowcount == 0:
                raise VMNotFound(vm.name)

    def update_lifecycle(self, name: str, change: Callable[[Lifecycle], None]) -> VM:
        """Change VM ``name``'s lifecycle record (its policies' state) in one transaction."""
        with self._transaction() as db:
            row = db.execute("SELECT data FROM vms WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise VMNotFound(name)
            vm = VM.model_validate_json(row[0])
            change(vm.lifecycle)
            db.execute("UPDATE vms SET data = ? WHERE name = ?", (vm.model_dump_json(), name))
        return vm

    def transition(
        self,
        name: str,
        allowed: Collection[VMState],
        to: VMState,
        owner: RuntimeInfo | None = None,
        admit: Callable[[list[VM], VM], None] | None = None,
        taking_over: RuntimeInfo | None = None,
        same_run: RuntimeInfo | None = None,
    ) -> VM:
        """Move a VM to ``to`` only if it is in one of ``allowed``, atomically.

        This compare-and-set is what keeps two operations on one VM apart, across
        threads and processes, without lock files. With ``taking_over`` the VM's operation
        must also still belong to that (dead) owner: one process alone takes it over. With
        ``same_run`` the VM must still be running that process, not one started since.
        """
        with self._transaction() as db:
            row = db.execute("SELECT data FROM vms WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise VMNotFound(name)
            vm = VM.model_validate_json(row[0])
            if vm.state not in allowed:
                wanted = ", ".join(sorted(s.value for s in allowed))
                raise InvalidState(
                    f"VM '{name}' is {vm.state.value}; this needs it to be {wanted}",
                    name=name,
                    state=vm.state.value,
                )
            if taking_over is not None and vm.operation_owner != taking_over:
                raise InvalidState(f"VM '{name}' was taken over already", name=name)
            if same_run is not None and vm.runtime != same_run:
                raise InvalidState(f"VM '{name}' was started again meanwhile", name=name)
            if admit is not None:  # checked and reserved in one transaction
                rows = db.execute("SELECT data FROM vms").fetchall()
                admit([VM.model_validate_json(r[0]) for r in rows], vm)
            vm.state = to
            vm.operation_owner = owner
            db.execute(
                "UPDATE vms SET state = ?, data = ? WHERE name = ?",
                (to.value, vm.model_dump_json(), name),
            )
        return vm

    def delete_vm(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM vms WHERE name = ?", (name,))

    # ---- images ----

    def insert_image(self, image: Image) -> bool:
        """Add an image record; False if ``name:tag`` already exists."""
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO images (name, tag, data) VALUES (?, ?, ?)",
                    (image.name, image.tag, image.model_dump_json()),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def put_image(self, image: Image) -> None:
        """Add or replace the record of ``name:tag``."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO images (name, tag, data) VALUES (?, ?, ?)",
                (image.name, image.tag, image.model_dump_json()),
            )

    def get_image(self, name: str, tag: str) -> Image | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT data FROM images WHERE name = ? AND tag = ?", (name, tag)
            ).fetchone()
        return Image.model_validate_json(row[0]) if row else None

    def list_images(self) -> list[Image]:
        with self._connect() as db:
            rows = db.execute("SELECT data FROM images ORDER BY name, tag").fetchall()
        return [Image.model_validate_json(row[0]) for row in rows]

    def delete_image(self, name: str, tag: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM images WHERE name = ? AND tag = ?", (name, tag))

    # ---- address leases ----

    def lease_for(self, network: str, vm: str) -> Lease | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT network, ip, vm, mac FROM leases WHERE network = ? AND vm = ?",
                (network, vm),
            ).fetchone()
        return Lease(*row) if row else None

    def leases(self, network: str) -> list[Lease]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT network, ip, vm, mac FROM leases WHERE network = ? ORDER BY vm",
                (network,),
            ).fetchall()
        return [Lease(*row) for row in rows]

    def allocate_lease(
        self, network: str, vm: str, candidates: Iterable[str], new_mac: Callable[[], str]
    ) -> Lease:
        """The VM's lease, or a new one on the first free candidate address, atomically."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT network, ip, vm, mac FROM leases WHERE network = ? AND vm = ?",
                (network, vm),
            ).fetchone()
            if row:
                return Lease(*row)
            used = {r[0] for r in db.execute("SELECT ip FROM leases WHERE network = ?", (network,))}
            macs = {r[0] for r in db.execute("SELECT mac FROM leases")}
            ip = next((c for c in candidates if c not in used), None)
            if ip is None:
                raise Conflict(f"network {network} has no free address left", network=network)
            mac = new_mac()
            while mac in macs:
                mac = new_mac()
            db.execute(
                "INSERT INTO leases (network, ip, vm, mac) VALUES (?, ?, ?, ?)",
                (network, ip, vm, mac),
            )
        return Lease(network, ip, vm, mac)

    def release_lease(self, network: str, vm: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE network = ? AND vm = ?", (network, vm))

    # ---- port forwards ----

    def add_forward(self, vm: str, forward: PortForward) -> None:
        """Record a forward; :class:`Conflict` if its host port is already forwarded."""
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO forwards (host_port, protocol, vm, guest_port) "
                    "VALUES (?, ?, ?, ?)",
                    (forward.host_port, forward.protocol.value, vm, forward.guest_port),
                )
        except sqlite3.IntegrityError:
            owner = self.forward_owner(forward)
            raise Conflict(
                f"host port {forward.host_port}/{forward.protocol.value} is already "
                f"forwarded to VM '{owner}'",
                host_port=forward.host_port,
                vm=owner,
            ) from None

    def forward_owner(self, forward: PortForward) -> str | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT vm FROM forwards WHERE host_port = ? AND protocol = ?",
                (forward.host_port, forward.protocol.value),
            ).fetchone()
        return row[0] if row else None

    def forwards(self, vm: str | None = None) -> list[tuple[str, PortForward]]:
        """``(vm, forward)`` pairs, of one VM or of all."""
        query = _FORWARDS
        args: tuple[str, ...] = ()
        if vm is not None:
            query, args = query + " WHERE vm = ?", (vm,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY host_port, protocol", args).fetchall()
        return [(r[0], _forward(r)) for r in rows]

    def remove_forwards(self, vm: str, forward: PortForward | None = None) -> int:
        """Remove one forward of ``vm`` (matched by host port and protocol) or all of them."""
        with self._transaction() as db:
            if forward is None:
                cursor = db.execute("DELETE FROM forwards WHERE vm = ?", (vm,))
            else:
                cursor = db.execute(
                    "DELETE FROM forwards WHERE vm = ? AND host_port = ? AND protocol = ?",
                    (vm, forward.host_port, forward.protocol.value),
                )
        return cursor.rowcount

    # ---- the event journal ----

    def journal_event(self, kind: str, data: dict[str, Any], keep: int) -> int:
        """Append an event; its id (ids only grow, across processes and restarts). The
        journal keeps the newest ``keep`` events."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO events (at, kind, data) VALUES (?, ?, ?)",
                (datetime.now(UTC).isoformat(), kind, json.dumps(data)),
            )
            event_id = int(cursor.lastrowid or 0)
            if event_id % JOURNAL_TRIM_EVERY == 0:
                db.execute("DELETE FROM events WHERE id <= ?", (event_id - keep,))
        return event_id

    def journal_since(self, after: int, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Up to ``limit`` events with ids above ``after``, oldest first: (id, kind, data)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, kind, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [(row[0], row[1], json.loads(row[2])) for row in rows]

    def journal_last(self) -> int:
        """The newest event's id (0: none yet)."""
        with self._connect() as db:
            row = db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)


#: The journal is trimmed to its bound on every this many events.
JOURNAL_TRIM_EVERY = 100
_FORWARDS = "SELECT vm, host_port, guest_port, protocol FROM forwards"


def _forward(row: tuple[str, int, int, str]) -> PortForward:
    # Built without validation: the rows were checked when they were added.
    return PortForward.model_construct(
        host_port=row[1], guest_port=row[2], protocol=Protocol(row[3])
    )


def _forwards_by_vm(rows: Iterable[tuple[str, int, int, str]]) -> dict[str, list[PortForward]]:
    by_vm: dict[str, list[PortForward]] = {}
    for row in rows:
        by_vm.setdefault(row[0], []).append(_forward(row))
    return by_vm


def _with_forwards(vm: VM, forwards: dict[str, list[PortForward]]) -> VM:
    vm.port_forwards = forwards.get(vm.name, [])
    return vm


def _copy(vm: VM) -> VM:
    """A copy of ``vm`` its holder may change (its fields, its list of forwards)."""
    copy = vm.model_copy()
    copy.port_forwards = list(vm.port_forwards)
    return copy
