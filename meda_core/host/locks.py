"""An exclusive lock on a file: one holder at a time, across threads and processes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path`` exclusively; the kernel releases it if the holder dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def try_exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold ``lock_path`` if nobody does (True), else do not wait for it (False)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            # Its holder may have removed the file meanwhile (remove_held): a lock on a
            # file no longer at ``lock_path`` excludes nobody.
            yield _still_there(lock_path, lock.fileno())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _still_there(lock_path: Path, fd: int) -> bool:
    try:
        return os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def remove_held(lock_path: Path) -> None:
    """Remove a lock file its caller holds (through ``try_exclusive``): whoever opened it
    before finds it gone once it gets the lock, and counts as not holding it."""
    lock_path.unlink(missing_ok=True)
