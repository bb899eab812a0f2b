"""The console log: its last lines read backwards within caps, followed across rotations,
rotated when too large, private on disk, and gone with its VM."""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meda_core.errors import VMNotFound
from meda_core.facade import Meda
from meda_core.models import VM
from meda_core.vms import console
from meda_core.vms.console import Follower, Position, rotate, rotated, tail


def _lines(first: int, last: int) -> bytes:
    return b"".join(b"line %d\n" % n for n in range(first, last + 1))


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "console.log"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of every ``pread`` the console module makes from now on."""
    sizes: list[int] = []
    real = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        data = real(fd, length, offset)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(console.os, "pread", pread)
    return sizes


# ---- tail ----


def test_tail_gives_the_last_lines_and_where_they_end(log: Path) -> None:
    log.write_bytes(_lines(1, 100))
    data, end = tail(log, 3)
    assert data == b"line 98\nline 99\nline 100\n"
    assert end == Position(log.stat().st_ino, log.stat().st_size)


def test_a_last_line_without_its_newline_counts(log: Path) -> None:
    log.write_bytes(b"a\nb\nc")
    assert tail(log, 2)[0] == b"b\nc"
    assert tail(log, 0)[0] == b""
    assert tail(log, 50)[0] == b"a\nb\nc"


def test_no_log_yet_is_empty(log: Path) -> None:
    assert tail(log, 10) == (b"", Position(0, 0))


def test_tail_reads_the_rotated_copy_before_the_log(log: Path) -> None:
    rotated(log).write_bytes(_lines(1, 10) + b"half of li")
    log.write_bytes(b"ne 11\n" + _lines(12, 13))
    assert tail(log, 4)[0] == b"line 10\nhalf of line 11\nline 12\nline 13\n"
    assert tail(log)[0] == _lines(1, 10) + b"half of line 11\n" + _lines(12, 13)


def test_tail_reads_backwards_only_as_far_as_it_needs(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.write_bytes(_lines(1, 1_000_000))  # about 13 MiB
    reads = _counting_reads(monkeypatch)
    assert tail(log, 5)[0] == _lines(999_996, 1_000_000)
    assert sum(reads) <= console.BLOCK


def test_tail_is_capped_in_lines(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log.write_bytes(_lines(1, 30_000))
    reads = _counting_reads(monkeypatch)
    data = tail(log, 1_000_000)[0]
    assert data == _lines(30_001 - console.MAX_TAIL_LINES, 30_000)
    assert tail(log)[0] == data
    assert sum(reads) < 2 * (len(data) + console.BLOCK)


def test_tail_is_capped_in_bytes_whatever_the_lines(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = b"x" * 1000 + b"\n"
    log.write_bytes(line * 10_000)  # 10 MB in 10,000 lines
    reads = _counting_reads(monkeypatch)
    data = tail(log)[0]
    assert len(data) <= console.MAX_TAIL_BYTES
    assert data == line * (len(data) // len(line))  # whole lines only
    assert sum(reads) <= console.MAX_TAIL_BYTES + console.BLOCK
    log.write_bytes(b"y" * (6 * 1024 * 1024))  # one line longer than the cap
    assert tail(log, 1)[0] == b"y" * console.MAX_TAIL_BYTES


# ---- rotation and modes ----


def test_rotation_copies_then_truncates_in_place(log: Path) -> None:
    log.write_bytes(_lines(1, 10))
    inode = log.stat().st_ino
    assert not rotate(log, 1000)
    assert rotate(log, 50)
    assert rotated(log).read_bytes() == _lines(1, 10)
    assert log.read_bytes() == b"" and log.stat().st_ino == inode
    log.write_bytes(_lines(11, 20))
    assert rotate(log, 50)  # the previous copy is replaced
    assert rotated(log).read_bytes() == _lines(11, 20)


def test_an_appending_writer_goes_on_at_the_start(log: Path) -> None:
    with log.open("ab") as writer:  # the hypervisor, which opened it for appending
        writer.write(_lines(1, 10))
        writer.flush()
        assert rotate(log, 10)
        writer.write(b"after\n")
        writer.flush()
    assert log.read_bytes() == b"after\n"


def test_the_log_and_its_copy_are_private(log: Path) -> None:
    old = os.umask(0)
    try:
        log.write_bytes(_lines(1, 100))
        os.chmod(log, 0o644)  # as a hypervisor might have made it
        rotated(log).write_bytes(b"older\n")
        os.chmod(rotated(log), 0o666)
        assert rotate(log, 10)
    finally:
        os.umask(old)
    assert _mode(log) == 0o600
    assert _mode(rotated(log)) == 0o600
    os.chmod(rotated(log), 0o644)
    console.keep_private(log)
    assert _mode(rotated(log)) == 0o600


def test_no_rotation_while_a_reader_holds_the_log(log: Path) -> None:
    log.write_bytes(_lines(1, 100))
    with log.open("rb") as reader:
        fcntl.flock(reader, fcntl.LOCK_SH)
        assert not rotate(log, 10)
    assert rotate(log, 10)


# ---- follow ----


def _follower(log: Path, gone: Callable[[], bool] = lambda: False) -> Follower:
    return Follower(log, tail(log, 0)[1], gone, 100)


def _append(log: Path, data: bytes) -> None:
    with log.open("ab") as writer:
        writer.write(data)


def test_follow_gives_what_is_appended_once(log: Path) -> None:
    log.write_bytes(b"before\n")
    follower = _follower(log)
    assert follower.read() == b""
    _append(log, b"one\n")
    assert follower.read() == b"one\n"
    assert follower.read() == b""


def test_follow_goes_on_across_a_rotation(log: Path) -> None:
    log.write_bytes(b"")
    follower = _follower(log)
    _append(log, _lines(1, 5))
    assert follower.read() == _lines(1, 5)
    _append(log, _lines(6, 20))  # unread when the log is rotated
    assert rotate(log, 100)
    _append(log, b"after\n")
    assert follower.read() == _lines(6, 20) + b"after\n"
    _append(log, _lines(21, 40))  # past 100 bytes: the follower rotates it itself
    assert follower.read() == _lines(21, 40)
    assert log.stat().st_size == 0 and rotated(log).read_bytes().endswith(_lines(21, 40))


def test_follow_starts_over_when_the_hypervisor_truncates(log: Path) -> None:
    log.write_bytes(_lines(1, 5))
    follower = Follower(log, tail(log, 0)[1], lambda: False, 10_000)
    log.write_bytes(b"booted again\n")  # a restart that truncates, no rotation
    assert follower.read() == b"booted again\n"


def test_follow_ends_when_the_vm_is_gone(log: Path) -> None:
    there = [True]
    follower = _follower(log, lambda: not there[0])
    assert follower.read() == b""
    there[0] = False
    with pytest.raises(EOFError):
        follower.read()


# ---- by VM name ----


def test_a_vm_without_a_console_yet_and_an_unknown_one(
    fake_meda: Meda, make_vm: Callable[..., VM]
) -> None:
    make_vm("quiet")
    assert fake_meda.consoles.tail("quiet") == b""
    with pytest.raises(VMNotFound):
        fake_meda.consoles.tail("nope")
    with pytest.raises(VMNotFound):
        fake_meda.consoles.follow("nope")


def test_a_stopped_vm_keeps_its_console(fake_meda: Meda, make_vm: Callable[..., VM]) -> None:
    make_vm("vm1")
    fake_meda.vms.start("vm1")
    fake_meda.vms.stop("vm1")
    assert b"fake VM vm1 booted" in fake_meda.consoles.tail("vm1")


def test_follow_ends_when_the_vm_is_deleted_and_its_logs_go_with_it(
    fake_meda: Meda, make_vm: Callable[..., VM]
) -> None:
    vm = make_vm("vm1")
    fake_meda.vms.start("vm1")
    data, follower = fake_meda.consoles.follow("vm1", 10)
    assert b"booted" in data
    _append(vm.console_log, b"x" * (fake_meda.settings.console_max_bytes + 1))
    fake_meda.consoles.tail("vm1", 1)  # a read rotates first
    assert rotated(vm.console_log).exists()
    fake_meda.vms.delete("vm1")
    assert not vm.console_log.exists() and not rotated(vm.console_log).exists()
    with pytest.raises(EOFError):
        follower.read()


@pytest.mark.parametrize(
    "meda_settings", [{"reconcile_interval": 0.1, "console_max_bytes": 4096}], indirect=True
)
def test_the_watchers_sweep_rotates(fake_meda: Meda, make_vm: Callable[..., VM]) -> None:
    vm = make_vm("vm1")
    fake_meda.vms.start("vm1")
    _append(vm.console_log, b"y" * 5000)
    fake_meda.watch()
    try:
        deadline = time.monotonic() + 10
        while vm.console_log.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        fake_meda.unwatch()
    assert vm.console_log.stat().st_size == 0
    assert rotated(vm.console_log).read_bytes().endswith(b"y" * 5000)
    assert _mode(rotated(vm.console_log)) == 0o600
