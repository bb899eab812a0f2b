"""GuestService: exec and files in a running guest, through the fake hypervisor's channel
and the fake agent (commands run as host processes in a scratch folder)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meda_core import hookimpl
from meda_core.backends.catalogue import BackendRegistry
from meda_core.backends.manager import PluginManager
from meda_core.backends.roles import AgentChannel, AgentSession, ExecExit, ExecOutput, ExecStream
from meda_core.errors import (
    BackendUnavailable,
    CommandTimedOut,
    InvalidRequest,
    InvalidState,
    NoAgent,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    VMNotFound,
)
from meda_core.facade import Meda
from meda_core.models import CreateVMRequest, ExecRequest
from meda_core.settings import Settings
from meda_core.testing.fakeagent import guest_path, scratch_root
from meda_core.testing.fakes import (
    AGENT_SOCKET,
    FakeHypervisor,
    FakeNetwork,
    FakeRegistry,
    FakeStorage,
)
from meda_core.vms.execs import QUEUE_BYTES, Running


def run(*argv: str, **fields: Any) -> ExecRequest:
    return ExecRequest(command=list(argv), **fields)


@pytest.fixture
def vm(running_vm: str) -> str:
    return running_vm


@pytest.fixture
def root(fake_meda: Meda, vm: str) -> Any:
    """The fake agent's scratch root: what the guest's ``/`` is."""
    return scratch_root(AgentChannel(fake_meda.vms.get(vm).vm_dir / AGENT_SOCKET))


def test_exec_gives_exit_code_and_both_streams(fake_meda: Meda, vm: str) -> None:
    result = fake_meda.guest.exec(vm, run("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.signal is None and not result.truncated


def test_stdin_env_and_cwd(fake_meda: Meda, vm: str, root: Any) -> None:
    (root / "work").mkdir()
    request = run(
        "sh", "-c", 'cat; printf "%s" "$X"; ls', stdin="in\n", env={"X": "y"}, cwd="/work"
    )
    (root / "work" / "f").touch()
    assert fake_meda.guest.exec(vm, request).stdout == "in\nyf\n"


def test_output_past_the_cap_is_cut_and_flagged(fake_meda: Meda, vm: str) -> None:
    fake_meda.settings.exec_output_max = 1000
    result = fake_meda.guest.exec(vm, run("sh", "-c", "head -c 5000 /dev/zero; echo e >&2"))
    assert len(result.stdout) == 1000 and result.truncated and result.stderr == "e\n"


def test_a_timeout_kills_and_keeps_the_partial_output(fake_meda: Meda, vm: str) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        fake_meda.guest.exec(vm, run("sh", "-c", "echo partial; exec sleep 30", timeout=1))
    assert time.monotonic() - started < 10
    assert caught.value.http_status == 408 and caught.value.code == "TIMEOUT"
    assert caught.value.details["stdout"] == "partial\n"
    assert len(fake_meda.guest.sessions) == 0


def test_no_vm_a_stopped_vm_and_no_agent(
    fake_meda: Meda, vm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(VMNotFound):
        fake_meda.guest.exec("nope", run("true"))
    (fake_meda.vms.get(vm).vm_dir / AGENT_SOCKET).unlink()
    fake_meda.settings.agent_timeout = 0.2
    with pytest.raises(NoAgent) as caught:
        fake_meda.guest.exec(vm, run("true"))
    assert caught.value.http_status == 422 and "meda images build" in caught.value.message
    monkeypatch.setattr(FakeHypervisor, "agent", False)
    with pytest.raises(NoAgent, match="no agent channel"):
        fake_meda.guest.exec(vm, run("true"))
    fake_meda.vms.stop(vm, timeout=0)
    with pytest.raises(InvalidState):
        fake_meda.guest.exec(vm, run("true"))


class NoAgentPlugin:
    """The fakes of every role but the agent's."""

    @hookimpl
    def meda_register_backends(self, registry: BackendRegistry) -> None:
        for backend in (FakeHypervisor, FakeStorage, FakeNetwork, FakeRegistry):
            registry.add(backend)


def test_without_an_agent_backend_the_rest_works(meda_settings: Settings, tmp_path: Path) -> None:
    plugins = PluginManager()
    plugins.add_plugin("fake", NoAgentPlugin())
    meda = Meda(meda_settings, plugins)
    try:
        (tmp_path / "vmlinuz").write_bytes(b"kernel")
        meda.images.import_files("default", kernel=tmp_path / "vmlinuz", cmdline="")
        meda.vms.create(CreateVMRequest(name="plain"))
        if meda.vms.get("plain").state != "running":
            meda.vms.start("plain")
        assert meda.vms.get("plain").state == "running"
        assert "agent" not in {b.role for b in meda.plugin_report().backends}
        with pytest.raises(NoAgent, match="no agent backend"):
            meda.guest.exec("plain", run("true"))
    finally:
        meda.vms.delete_all()
        meda.close()


def test_sessions_are_capped_and_forgotten(fake_meda: Meda, vm: str) -> None:
    fake_meda.guest.sessions.limit = 1
    first = fake_meda.guest.start(vm, run("sleep", "30"), None)
    with pytest.raises(RateLimited):
        fake_meda.guest.start(vm, run("true"), None)
    first.close()
    assert len(fake_meda.guest.sessions) == 0
    fake_meda.guest.exec(vm, run("true"))


def test_stdin_goes_only_to_the_callers_own_session(fake_meda: Meda, vm: str) -> None:
    from meda_core.vms.guest import caller

    token = caller.set("token:alice")
    try:
        running = fake_meda.guest.start(vm, run("cat"), None)
    finally:
        caller.reset(token)
    with pytest.raises(NotFound):
        fake_meda.guest.stdin(vm, running.id, [b"mallory"], eof=True)
    token = caller.set("token:alice")
    try:
        fake_meda.guest.stdin(vm, running.id, [b"alice"], eof=True)
    finally:
        caller.reset(token)
    running.wait()
    running.close()
    assert running.exit is not None and running.exit.code == 0


def test_file_round_trip_with_mode(fake_meda: Meda, vm: str, root: Any) -> None:
    data = os.urandom(200_000)
    result = fake_meda.guest.write_file(vm, "/blob", [data[:70_000], data[70_000:]], mode="0600")
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (root / "blob").stat().st_mode & 0o777 == 0o600
    assert b"".join(fake_meda.guest.read_file(vm, "/blob")) == data


def test_bad_paths_modes_and_owners(fake_meda: Meda, vm: str) -> None:
    for path in ("relative", "/a\0b", ""):
        with pytest.raises(InvalidRequest):
            fake_meda.guest.write_file(vm, path, [b"x"])
    with pytest.raises(InvalidRequest):
        fake_meda.guest.write_file(vm, "/x", [b"x"], mode="999")
    with pytest.raises(InvalidRequest):
        fake_meda.guest.write_file(vm, "/x", [b"x"], owner="root")
    with pytest.raises(NotFound):
        fake_meda.guest.read_file(vm, "/missing")


def test_the_file_cap_leaves_nothing(fake_meda: Meda, vm: str, root: Any) -> None:
    fake_meda.settings.file_max_bytes = 1000
    with pytest.raises(PayloadTooLarge):
        fake_meda.guest.write_file(vm, "/big", [b"x" * 600, b"x" * 600])
    assert sorted(p.name for p in root.iterdir()) == []


def test_the_fakes_files_never_leave_its_scratch_root(
    fake_meda: Meda, vm: str, root: Any, tmp_path: Any
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    for path in ("/../outside/x", "/link/x", "/../../etc/passwd"):
        with pytest.raises(InvalidRequest, match="scratch root"):
            fake_meda.guest.write_file(vm, path, [b"x"])
    with pytest.raises(InvalidRequest):
        guest_path(root, "/link/../../x")
    assert list(outside.iterdir()) == []


def test_a_directory_as_tar_both_ways(fake_meda: Meda, vm: str, root: Any) -> None:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        for name, data in (("a.txt", b"alpha"), ("sub/b.bin", bytes(range(256)))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fake_meda.guest.write_file(vm, "/srv/tree", [packed.getvalue()], archive=True)
    assert (root / "srv/tree/sub/b.bin").read_bytes() == bytes(range(256))
    back = b"".join(fake_meda.guest.read_file(vm, "/srv/tree", archive=True))
    with tarfile.open(fileobj=io.BytesIO(back)) as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
    assert names == {"a.txt", "sub/b.bin"}


def test_the_audit_line_names_the_command_never_its_output(
    fake_meda: Meda, vm: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="meda.audit"):
        fake_meda.guest.exec(vm, run("sh", "-c", "echo s3cr3t-output"))
        fake_meda.guest.write_file(vm, "/f", [b"s3cr3t-bytes"])
    text = caplog.text
    assert "vm=vm1" in text and "echo s3cr3t-output" in text and "exit=0" in text
    assert "path=/f size=12" in text
    assert "s3cr3t-output\n" not in text and "s3cr3t-bytes" not in text


def test_the_agent_role_is_selected_and_reported(fake_meda: Meda) -> None:
    agents = [b for b in fake_meda.plugin_report().backends if b.role == "agent"]
    assert [(b.name, b.selected) for b in agents] == [("fake", True)]


@pytest.mark.parametrize("meda_settings", [{"agent": "nope"}], indirect=True)
def test_an_unknown_meda_agent_says_what_is_installed(fake_meda: Meda, vm: str) -> None:
    with pytest.raises(BackendUnavailable, match=r"MEDA_AGENT.*registered: fake"):
        fake_meda.guest.exec(vm, run("true"))


def test_a_guest_that_does_not_end_a_killed_command_costs_a_timeout_not_a_hang(
    fake_meda: Meda, vm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meda_core.testing.fakeagent import FakeSession
    from meda_core.vms import guest

    monkeypatch.setattr(FakeSession, "kill", lambda self: None)  # the kill is lost
    monkeypatch.setattr(guest, "KILL_GRACE", 0.5)
    started = time.monotonic()
    with pytest.raises(CommandTimedOut):
        fake_meda.guest.exec(vm, run("sh", "-c", "echo x; sleep 5", timeout=0.3))
    assert time.monotonic() - started < 3


class Flood(AgentSession):
    """A guest command whose output never ends: counts what the host took from it."""

    def __init__(self) -> None:
        self.taken, self.closed = 0, False

    def events(self, timeout: float | None = None) -> Iterator[ExecOutput | ExecExit]:
        while not self.closed and self.taken < 256 * 1024 * 1024:
            self.taken += 65536
            yield ExecOutput(ExecStream.STDOUT, b"z" * 65536)
        yield ExecExit(None, 9)

    def send_stdin(self, data: bytes) -> None:
        pass

    def close_stdin(self) -> None:
        pass

    def kill(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


def test_a_streamed_flood_nobody_reads_is_held_back_not_queued() -> None:
    flood = Flood()
    running = Running("1-x", "vm1", "local", flood, None, lambda running: None)
    time.sleep(1)
    assert flood.taken <= 2 * QUEUE_BYTES  # the rest waits in the guest (the link's window)
    assert running.next(timeout=1) == {"event": "started", "data": {"session": "1-x"}}
    assert running.next(timeout=1)["event"] == "stdout"  # type: ignore[index]
    running.close()
    running.wait()  # the pump drops what comes after the close and ends
    assert flood.taken < 256 * 1024 * 1024


@pytest.fixture
def silent_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_meda: Meda) -> None:
    """A guest whose tar starts and then says nothing, and a short MEDA_EXEC_TIMEOUT."""
    bin = tmp_path / "bin"
    bin.mkdir()
    (bin / "tar").write_text("#!/bin/sh\nexec sleep 60\n")
    (bin / "tar").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin}:{os.environ['PATH']}")
    fake_meda.settings.exec_timeout = 0.5


def test_a_tar_download_from_a_silent_guest_times_out(
    fake_meda: Meda, vm: str, root: Any, silent_tar: None
) -> None:
    (root / "d").mkdir()
    started = time.monotonic()
    with pytest.raises(CommandTimedOut):
        b"".join(fake_meda.guest.read_file(vm, "/d", archive=True))
    assert time.monotonic() - started < 5
    assert len(fake_meda.guest.sessions) == 0


def test_a_tar_upload_to_a_silent_guest_times_out(
    fake_meda: Meda, vm: str, silent_tar: None
) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimedOut):
        fake_meda.guest.write_file(vm, "/d", [b"x" * 1024], archive=True)
    assert time.monotonic() - started < 5
    assert len(fake_meda.guest.sessions) == 0


def test_a_download_stops_at_the_cap(fake_meda: Meda, vm: str, root: Any) -> None:
    fake_meda.settings.file_max_bytes = 1000
    (root / "big").write_bytes(b"x" * 300_000)
    (root / "d").mkdir()
    (root / "d" / "big").write_bytes(b"x" * 300_000)
    for archive in (False, True):
        taken = bytearray()
        with pytest.raises(PayloadTooLarge):
            for data in fake_meda.guest.read_file(vm, "/d" if archive else "/big", archive):
                taken += data
        assert len(taken) <= 1000 + 64 * 1024
    assert len(fake_meda.guest.sessions) == 0
    (root / "small").write_bytes(b"x" * 1000)
    assert b"".join(fake_meda.guest.read_file(vm, "/small")) == b"x" * 1000
