"""The state store: VMs and images in embedded SQLite (WAL, one transaction per change)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from meda_core.errors import InvalidState, VMExists, VMNotFound
from meda_core.models import VM, Image, RuntimeInfo, VMState

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    name  TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    data  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    name TEXT NOT NULL,
    tag  TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (name, tag)
);
"""


class StateStore:
    """Typed access to the SQLite database under ``MEDA_HOME``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- VMs ----

    def insert_vm(self, vm: VM) -> None:
        """Add a new VM; :class:`VMExists` if the name is taken."""
        try:
            with self._transaction() as db:
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

    def save_vm(self, vm: VM) -> None:
        """Overwrite the stored record of an existing VM."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE vms SET state = ?, data = ? WHERE name = ?",
                (vm.state.value, vm.model_dump_json(), vm.name),
            )
            if cursor.rowcount == 0:
                raise VMNotFound(vm.name)

    def transition(
        self,
        name: str,
        allowed: Collection[VMState],
        to: VMState,
        owner: RuntimeInfo | None = None,
    ) -> VM:
        """Move a VM to ``to`` only if it is in one of ``allowed``, atomically.

        This compare-and-set is what keeps two operations on one VM apart, across
        threads and processes, without lock files.
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
