from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meda_core.errors import StateVersionError
from meda_core.state import migrations
from meda_core.state.store import StateStore


def _version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def test_a_new_store_is_at_the_latest_version(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    assert store.upgraded_from == 0
    assert _version(store.path) == migrations.latest()
    assert {"vms", "images", "leases", "forwards"} <= _tables(store.path)
    assert list(tmp_path.glob("*.bak")) == []  # nothing to keep from an empty store


def test_a_store_from_a_newer_meda_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={migrations.latest() + 1}")
    before = path.read_bytes()
    with pytest.raises(StateVersionError, match="newer meda") as caught:
        StateStore(path)
    assert caught.value.details["found"] == migrations.latest() + 1
    assert caught.value.exit_code == 9
    assert path.read_bytes() == before


def _add_migration(monkeypatch: pytest.MonkeyPatch, migration: migrations.Migration) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, migration])


def test_an_older_store_is_upgraded_with_a_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    StateStore(path)
    old_version = migrations.latest()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO images (name, tag, data) VALUES ('a', 'b', '{}')")

    def add_notes(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes SELECT name FROM images")

    _add_migration(monkeypatch, add_notes)
    assert StateStore(path).upgraded_from == old_version
    assert _version(path) == old_version + 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT text FROM notes").fetchall() == [("a",)]
    backup = path.with_name(f"state.db.v{old_version}.bak")
    assert _version(backup) == old_version and "notes" not in _tables(backup)
    assert backup.stat().st_mode & 0o077 == 0
    assert StateStore(path).upgraded_from == old_version + 1  # once only


def test_a_failed_migration_leaves_the_old_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    StateStore(path)
    version = migrations.latest()

    def half_done(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE notes (text TEXT)")
        raise RuntimeError("power cut")

    _add_migration(monkeypatch, half_done)
    with pytest.raises(RuntimeError, match="power cut"):
        StateStore(path)
    assert _version(path) == version and "notes" not in _tables(path)


def test_two_openers_of_an_old_store_migrate_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    StateStore(path)
    runs: list[str] = []

    def slow(db: sqlite3.Connection) -> None:
        runs.append(threading.current_thread().name)
        time.sleep(0.3)  # the other opener has read the old version and waits for the lock

    _add_migration(monkeypatch, slow)
    openers = [threading.Thread(target=StateStore, args=(path,)) for _ in range(2)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join()
    assert len(runs) == 1 and _version(path) == migrations.latest()


@pytest.mark.parametrize("command", [["list"], ["serve", "--port", "1"]])
def test_the_cli_and_the_server_refuse_a_newer_home(tmp_path: Path, command: list[str]) -> None:
    home = tmp_path / "home"
    StateStore(home / "state.db")
    with sqlite3.connect(home / "state.db") as db:
        db.execute(f"PRAGMA user_version={migrations.latest() + 1}")
    env = {**os.environ, "MEDA_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "meda_cli.main", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == StateVersionError.exit_code, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # (serve logs its version first)
    assert last.startswith("error: ") and "newer meda" in last
    assert "Traceback" not in done.stderr


def test_version_2_gives_built_images_port_22_and_others_none(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:  # as meda at version 1 left it
        migrations.MIGRATIONS[0](db)
        db.execute("PRAGMA user_version=1")
        for name, source in (
            ("debian", "build:0123456789abcdef"),
            ("guest", None),
            ("pulled", "ghcr.io/cirunlabs/x:v1"),
        ):
            record = {
                "name": name,
                "tag": "latest",
                "created": "2026-01-01T00:00:00Z",
                "source": source,
                "size": 0,
            }
            db.execute("INSERT INTO images VALUES (?, 'latest', ?)", (name, json.dumps(record)))
    store = StateStore(path)
    assert store.upgraded_from == 1 and _version(path) == migrations.latest()
    ports = {i.name: i.ready_port for i in store.list_images()}
    assert ports == {"debian": 22, "guest": None, "pulled": None}
    assert (tmp_path / "state.db.v1.bak").exists()


def _vm_record(name: str, **disk: str) -> dict[str, object]:
    return {
        "name": name,
        "state": "stopped",
        "spec": {"memory": "1G", "cpus": 1, "disk": "10G"},
        "image": "guest:latest",
        "vm_dir": f"/var/lib/meda/vms/{name}",
        "hypervisor": "qemu",
        "storage": "qcow2",
        "created": "2026-01-01T00:00:00Z",
        "uuid": "00000000-0000-4000-8000-000000000000",
        **disk,
    }


def test_version_3_gives_every_vm_the_qcow2_disk_it_had(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:  # as meda at version 2 left it
        for migration in migrations.MIGRATIONS[:2]:
            migration(db)
        db.execute("PRAGMA user_version=2")
        old = _vm_record("old")
        db.execute("INSERT INTO vms VALUES ('old', 'stopped', ?)", (json.dumps(old),))
    store = StateStore(path)
    assert store.upgraded_from == 2
    vm = store.get_vm("old")
    assert vm is not None and (vm.disk_file, vm.disk_format) == ("disk.qcow2", "qcow2")
    assert vm.disk_path == Path("/var/lib/meda/vms/old/disk.qcow2")
    assert (tmp_path / "state.db.v2.bak").exists()


def test_version_3_keeps_a_disk_a_record_already_names(tmp_path: Path) -> None:
    """Only a record without a disk is given qcow2: the migration assumes nothing else."""
    with sqlite3.connect(tmp_path / "state.db") as db:
        for migration in migrations.MIGRATIONS[:2]:
            migration(db)
        raw = _vm_record("raw", disk_file="disk.raw", disk_format="raw")
        db.execute("INSERT INTO vms VALUES ('raw', 'stopped', ?)", (json.dumps(raw),))
        migrations.MIGRATIONS[2](db)
        (data,) = db.execute("SELECT data FROM vms").fetchone()
    assert json.loads(data)["disk_file"] == "disk.raw"
    assert json.loads(data)["disk_format"] == "raw"


def test_version_4_gives_every_vm_no_labels_and_no_policies_and_adds_the_journals(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:  # as meda at version 3 left it
        for migration in migrations.MIGRATIONS[:3]:
            migration(db)
        db.execute("PRAGMA user_version=3")
        old = _vm_record("old", disk_file="disk.raw", disk_format="raw")
        db.execute("INSERT INTO vms VALUES ('old', 'stopped', ?)", (json.dumps(old),))
    store = StateStore(path)
    assert store.upgraded_from == 3
    vm = store.get_vm("old")
    assert vm is not None and vm.labels == {} and vm.disk_file == "disk.raw"
    assert (vm.lifecycle.restart, vm.lifecycle.expires, vm.lifecycle.restarts) == ("no", None, 0)
    assert {"events", "idempotency"} <= _tables(path)
    assert (tmp_path / "state.db.v3.bak").exists()
