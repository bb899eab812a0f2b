"""Numbered migrations of the state store: each one takes the database one version forward.

A database records its version in SQLite's ``user_version``. Opening it runs every
migration it lacks, in order, inside one transaction together with the new version
number: a crash leaves the old schema or the new one, never a mix. The file as it was is
copied beside it first (``state.db.v<N>.bak``), so an operator can go back to the meda
that wrote it. A database from a newer meda is refused: this code cannot know its
meaning.

Every change to what the store keeps adds a function here, never an edit of an old one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from meda_core.errors import StateVersionError

Migration = Callable[[sqlite3.Connection], None]


def _v1_tables(db: sqlite3.Connection) -> None:
    """VMs and images as JSON records; address leases; port forwards."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS vms (name TEXT PRIMARY KEY, state TEXT NOT NULL,"
        " data TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS leases (network TEXT NOT NULL, ip TEXT NOT NULL,"
        " vm TEXT NOT NULL, mac TEXT NOT NULL UNIQUE, PRIMARY KEY (network, ip),"
        " UNIQUE (network, vm))"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS forwards (host_port INTEGER NOT NULL,"
        " protocol TEXT NOT NULL, vm TEXT NOT NULL, guest_port INTEGER NOT NULL,"
        " PRIMARY KEY (host_port, protocol))"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS images (name TEXT NOT NULL, tag TEXT NOT NULL,"
        " data TEXT NOT NULL, PRIMARY KEY (name, tag))"
    )


#: The port runs of a built image wait on: its guest runs sshd (imagebuild.PACKAGES).
BUILT_IMAGE_READY_PORT = 22


def _v2_image_ready_ports(db: sqlite3.Connection) -> None:
    """Readiness becomes a property of the image: images ``meda images build`` made
    (source ``build:…``) keep port 22, which every run waited on before; the others get
    none, so their runs boot cold instead of waiting on a port their guest may not open."""
    for name, tag, data in db.execute("SELECT name, tag, data FROM images").fetchall():
        record = json.loads(data)
        built = str(record.get("source") or "").startswith("build:")
        record["ready_port"] = BUILT_IMAGE_READY_PORT if built else None
        db.execute(
            "UPDATE images SET data = ? WHERE name = ? AND tag = ?", (json.dumps(record), name, tag)
        )


#: The disk every VM had before its storage backend named it: qcow2, in ``disk.qcow2``.
OLD_DISK_FILE, OLD_DISK_FORMAT = "disk.qcow2", "qcow2"


def _v3_vm_disks(db: sqlite3.Connection) -> None:
    """A VM records its disk's file and format (its storage backend's, when the disk is
    made); every VM made before was given the one meda assumed then."""
    for name, data in db.execute("SELECT name, data FROM vms").fetchall():
        record = json.loads(data)
        record.setdefault("disk_file", OLD_DISK_FILE)
        record.setdefault("disk_format", OLD_DISK_FORMAT)
        db.execute("UPDATE vms SET data = ? WHERE name = ?", (json.dumps(record), name))


def _v4_programs(db: sqlite3.Connection) -> None:
    """For the programs that drive meda: every VM gets labels and lifecycle policies (none,
    as before); a journal of events to replay; the answers kept for idempotent retries."""
    for name, data in db.execute("SELECT name, data FROM vms").fetchall():
        record = json.loads(data)
        record.setdefault("labels", {})
        record.setdefault("lifecycle", {"restart": "no", "expires": None, "restarts": 0})
        db.execute("UPDATE vms SET data = ? WHERE name = ?", (json.dumps(record), name))
    db.execute(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " at TEXT NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS idempotency (client TEXT NOT NULL, key TEXT NOT NULL,"
        " fingerprint TEXT NOT NULL, status INTEGER, answer BLOB, created REAL NOT NULL,"
        " PRIMARY KEY (client, key))"
    )


#: Version N is reached by running ``MIGRATIONS[N - 1]``; the list only ever grows.
MIGRATIONS: list[Migration] = [_v1_tables, _v2_image_ready_ports, _v3_vm_disks, _v4_programs]


def latest() -> int:
    return len(MIGRATIONS)


def version_of(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def check_not_newer(found: int, path: Path) -> None:
    if found > latest():
        raise StateVersionError(
            f"{path} was written by a newer meda (state version {found}; this meda knows up "
            f"to {latest()}): upgrade meda, or restore the state.db.v{latest()}.bak the newer "
            "meda left beside it",
            path=str(path),
            found=found,
            supported=latest(),
        )


def backup(db: sqlite3.Connection, path: Path) -> Path | None:
    """A consistent copy of the database beside it, named after the version it holds
    (another opener may have migrated it meanwhile: a copy of the latest is not kept)."""
    staged = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    copy = sqlite3.connect(staged)
    try:
        db.backup(copy)
        version = version_of(copy)
    finally:
        copy.close()
    if version == latest():
        staged.unlink()
        return None
    staged.chmod(0o600)
    return staged.replace(path.with_name(f"{path.name}.v{version}.bak"))


def upgrade(db: sqlite3.Connection, path: Path) -> int:
    """Bring ``db`` (an open connection, outside any transaction) to the latest version.

    Returns the version it had. Safe against another process doing the same at once:
    the version is read again once the write lock is held.
    """
    found = version_of(db)
    check_not_newer(found, path)
    if found == latest():
        return found
    if found > 0:
        backup(db, path)
    db.execute("BEGIN IMMEDIATE")
    try:
        found = version_of(db)
        check_not_newer(found, path)
        for migration in MIGRATIONS[found:]:
            migration(db)
        db.execute(f"PRAGMA user_version={latest()}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found
