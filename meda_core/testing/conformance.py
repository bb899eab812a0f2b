"""Conformance suites per backend role: subclass one and provide its fixtures.

    from meda_core.testing.conformance import StorageConformance

    class TestMyStorage(StorageConformance):
        @pytest.fixture
        def backend(self, backend_context):
            return MyStorage(backend_context)

Hypervisor suites also need ``launch`` (a factory ``name -> LaunchSpec`` of a VM that
boots) and may override ``stop_timeout``. Agent suites need ``channel`` (a live guest's)
and ``writable_dir`` (a guest directory files may be written in).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meda_core.backends.roles import (
    AgentBackend,
    AgentChannel,
    AgentSession,
    Availability,
    Backend,
    Capability,
    ExecCommand,
    ExecExit,
    ExecOutput,
    ExecStream,
    GuestAddressing,
    HypervisorBackend,
    ImageFiles,
    LaunchSpec,
    NetworkAttachment,
    NetworkBackend,
    NicKind,
    RegistryBackend,
    StorageBackend,
)
from meda_core.errors import Conflict, MedaError, NotFound
from meda_core.host import processes as procs
from meda_core.inputs.references import Reference
from meda_core.models import PortForward, RuntimeInfo

MiB = 1024 * 1024
LaunchFactory = Callable[[str], LaunchSpec]


class BackendConformance:
    """What every backend of every role must do."""

    def test_has_a_name_and_role(self, backend: Backend) -> None:
        assert isinstance(backend.name, str) and backend.name
        assert backend.role.value in {"hypervisor", "network", "storage", "registry", "agent"}
        assert isinstance(backend.capabilities, frozenset)

    def test_capabilities_are_known(self, backend: Backend) -> None:
        """Each capability is a :class:`Capability`: the core asks for nothing else."""
        known = {capability.value for capability in Capability}
        unknown = sorted(str(c) for c in backend.capabilities if c not in known)
        assert not unknown, f"unknown capabilities {unknown}; known are {sorted(known)}"

    def test_check_available_explains_itself(self, backend: Backend) -> None:
        available = backend.check_available()
        assert isinstance(available, Availability)
        assert available.ok or (available.reason and available.reason.strip())


class StorageConformance(BackendConformance):
    def test_every_disk_is_in_the_declared_format(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        """Hypervisors open a VM's disk as :attr:`StorageBackend.disk_format` says."""
        assert isinstance(backend.disk_format, str) and backend.disk_format
        assert "/" not in backend.disk_name() and backend.disk_name() not in {".", ".."}
        base = tmp_path / "base"
        made = [
            backend.create_disk(base, 32 * MiB),
            backend.create_disk(tmp_path / "on-base", 64 * MiB, base),
            backend.flatten(tmp_path / "on-base", tmp_path / "flat"),
            backend.disk_info(tmp_path / "flat"),
        ]
        assert [info.format for info in made] == [backend.disk_format] * len(made)

    def test_blank_disk_has_requested_size(self, backend: StorageBackend, tmp_path: Path) -> None:
        info = backend.create_disk(tmp_path / "blank", 64 * MiB)
        assert info.virtual_size == 64 * MiB
        assert backend.disk_info(tmp_path / "blank").virtual_size == 64 * MiB

    def test_disk_from_a_base(self, backend: StorageBackend, tmp_path: Path) -> None:
        """An overlay on the base (capability ``copy-on-write``), else a standalone copy."""
        base = tmp_path / "base"
        backend.create_disk(base, 32 * MiB)
        info = backend.create_disk(tmp_path / "overlay", 128 * MiB, base)
        assert info.virtual_size == 128 * MiB
        if Capability.COPY_ON_WRITE in backend.capabilities:
            assert info.backing_file is not None
            assert info.backing_file.resolve() == base.resolve()
        else:
            assert info.backing_file is None

    def test_delete_removes_and_is_idempotent(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        disk = tmp_path / "disk"
        backend.create_disk(disk, 16 * MiB)
        backend.delete_disk(disk)
        assert not disk.exists()
        backend.delete_disk(disk)

    def test_failed_create_leaves_nothing(self, backend: StorageBackend, tmp_path: Path) -> None:
        where = tmp_path / "failed-create"
        where.mkdir()
        with pytest.raises(MedaError):
            backend.create_disk(where / "disk", 16 * MiB, where / "missing-base")
        assert list(where.iterdir()) == []

    def test_flatten_gives_a_standalone_disk(self, backend: StorageBackend, tmp_path: Path) -> None:
        base = tmp_path / "base"
        backend.create_disk(base, 32 * MiB)
        backend.create_disk(tmp_path / "overlay", 64 * MiB, base)
        info = backend.flatten(tmp_path / "overlay", tmp_path / "flat")
        assert info.backing_file is None and info.virtual_size == 64 * MiB

    def test_info_of_missing_disk_is_an_error(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        with pytest.raises(MedaError):
            backend.disk_info(tmp_path / "missing")


class HypervisorConformance(BackendConformance):
    @pytest.fixture
    def stop_timeout(self) -> float:
        return 30.0

    @pytest.fixture
    def running(
        self, backend: HypervisorBackend, launch: LaunchFactory, stop_timeout: float
    ) -> Iterator[tuple[LaunchSpec, RuntimeInfo]]:
        spec = launch("conformance")
        runtime = backend.start(spec)
        try:
            yield spec, runtime
        finally:
            backend.stop(runtime, spec.vm_dir, stop_timeout)
            backend.cleanup(spec.vm_dir)

    def test_start_gives_a_live_identified_process(
        self, backend: HypervisorBackend, running: tuple[LaunchSpec, RuntimeInfo]
    ) -> None:
        _, runtime = running
        assert backend.is_running(runtime)
        assert procs.is_alive(runtime)
        assert runtime.boot_id == procs.boot_id()

    def test_the_watched_process_is_alive_and_exits_with_the_vm(
        self, backend: HypervisorBackend, launch: LaunchFactory, stop_timeout: float
    ) -> None:
        """A server holds a pidfd on it: it must run while the VM does and be gone once the
        VM is stopped (None: the VM is checked at intervals only)."""
        spec = launch("watched")
        runtime = backend.start(spec)
        try:
            watched = backend.watched_process(runtime)
            if watched is None:
                pytest.skip(f"{backend.name} names no process to watch")
            assert procs.is_alive(watched)
        finally:
            backend.stop(runtime, spec.vm_dir, stop_timeout)
            backend.cleanup(spec.vm_dir)
        assert procs.wait_gone(watched, 10)

    def test_recover_finds_the_process_by_uuid_only(
        self, backend: HypervisorBackend, running: tuple[LaunchSpec, RuntimeInfo]
    ) -> None:
        spec, runtime = running
        found = backend.recover(spec.vm_dir, spec.uuid)
        assert found is not None and found.pid == runtime.pid
        assert backend.recover(spec.vm_dir, "00000000-0000-0000-0000-000000000000") is None

    def test_stop_ends_the_process_and_cleanup_removes_runtime_files(
        self, backend: HypervisorBackend, launch: LaunchFactory, stop_timeout: float
    ) -> None:
        spec = launch("stopper")
        before = set(spec.vm_dir.iterdir())
        runtime = backend.start(spec)
        backend.stop(runtime, spec.vm_dir, stop_timeout)
        assert not backend.is_running(runtime)
        backend.cleanup(spec.vm_dir)
        assert backend.recover(spec.vm_dir, spec.uuid) is None
        left = set(spec.vm_dir.iterdir()) - before - {spec.console_log}
        assert left == set(), f"runtime files left behind: {left}"
        backend.stop(runtime, spec.vm_dir, stop_timeout)  # stopping a stopped VM is harmless

    def test_snapshot_then_restore(
        self,
        backend: HypervisorBackend,
        running: tuple[LaunchSpec, RuntimeInfo],
        stop_timeout: float,
        tmp_path: Path,
    ) -> None:
        if Capability.SNAPSHOT not in backend.capabilities:
            pytest.skip(f"{backend.name} has no 'snapshot' capability")
        spec, runtime = running
        state = tmp_path / "saved-state"
        backend.save_state(runtime, spec.vm_dir, state)
        backend.resume(runtime, spec.vm_dir)
        assert state.stat().st_size > 0 and backend.is_running(runtime)
        backend.stop(runtime, spec.vm_dir, stop_timeout)
        backend.cleanup(spec.vm_dir)
        restored = backend.start(dataclasses.replace(spec, restore_state=state))
        try:
            assert backend.is_running(restored) and restored.pid != runtime.pid
        finally:
            backend.stop(restored, spec.vm_dir, stop_timeout)

    def test_failed_start_raises_and_leaves_no_process(
        self, backend: HypervisorBackend, launch: LaunchFactory, tmp_path: Path
    ) -> None:
        spec = launch("broken")
        spec.disk.unlink()
        with pytest.raises(MedaError):
            backend.start(spec)
        assert backend.recover(spec.vm_dir, spec.uuid) is None


class NetworkConformance(BackendConformance):
    """Network backends. Override ``busy_port`` where the backend's ports live elsewhere
    (another namespace): it must yield a TCP port that is in use where the backend looks."""

    @pytest.fixture
    def busy_port(self) -> Iterator[int]:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", 0))
            sock.listen()
            yield sock.getsockname()[1]

    def test_allocation_is_stable_and_distinct(self, backend: NetworkBackend) -> None:
        first = backend.allocate("net-a")
        assert backend.allocate("net-a") == first
        second = backend.allocate("net-b")
        assert second.mac != first.mac
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", first.mac)
        assert int(first.mac.split(":")[0], 16) & 1 == 0, "a MAC must be unicast"
        if Capability.DHCP in backend.capabilities:
            assert first.ip and second.ip and first.ip != second.ip
        backend.release("net-a")
        backend.release("net-b")
        backend.release("net-b")  # idempotent

    def test_concurrent_allocations_get_distinct_addresses(self, backend: NetworkBackend) -> None:
        names = [f"par-{i}" for i in range(10)]
        with ThreadPoolExecutor(max_workers=10) as pool:
            attachments = list(pool.map(backend.allocate, names))
        try:
            assert len({a.mac for a in attachments}) == 10
            if Capability.DHCP in backend.capabilities:
                assert len({a.ip for a in attachments}) == 10
        finally:
            for name in names:
                backend.release(name)

    def test_plug_gives_the_nic_and_unplug_is_idempotent(self, backend: NetworkBackend) -> None:
        attachment = backend.allocate("net-plug")
        try:
            nic = backend.plug("net-plug", attachment)
            assert nic.mac == attachment.mac
            assert nic.kind in set(NicKind)
            assert nic.kind != NicKind.TAP or nic.tap
            assert backend.nic(attachment) == nic, "nic() must say what plug() gives"
            backend.unplug("net-plug", attachment)
            backend.unplug("net-plug", attachment)
        finally:
            backend.release("net-plug")

    def test_an_isolated_nic_is_in_the_vms_namespace(self, backend: NetworkBackend) -> None:
        """``nic`` only says (nothing is made): the dry run shows what a start would plug."""
        if Capability.ISOLATED not in backend.capabilities:
            pytest.skip("the backend does not isolate VMs")
        attachment = backend.allocate("net-iso", isolated=True)
        try:
            assert attachment.netns is not None
            nic = backend.nic(attachment)
            assert nic.mac == attachment.mac and nic.netns == attachment.netns
            assert nic.kind != NicKind.TAP or nic.tap
        finally:
            backend.release("net-iso")

    def test_guest_addressing(self, backend: NetworkBackend) -> None:
        """What the seed tells the guest: nothing, DHCP, or a static address that parses."""
        attachment = backend.allocate("net-addr")
        try:
            addressing = backend.guest_addressing(attachment)
            assert addressing is None or isinstance(addressing, GuestAddressing)
            if addressing is not None and addressing.address is not None:
                interface = ipaddress.ip_interface(addressing.address)
                assert "/" in addressing.address and interface.network.prefixlen > 0
                for server in (addressing.gateway, *addressing.nameservers):
                    assert server is None or ipaddress.ip_address(server)
        finally:
            backend.release("net-addr")

    def test_guest_endpoint(self, backend: NetworkBackend) -> None:
        """Where ``meda ssh`` connects, given a forward of the guest's port 22."""
        attachment = backend.allocate("net-ep")
        try:
            forward = PortForward(host_port=2222, guest_port=22)
            host, port = backend.guest_endpoint("net-ep", attachment, [forward], 22)
            assert ipaddress.ip_address(host) and 0 < port < 65536
        finally:
            backend.release("net-ep")

    def test_guest_endpoint_without_an_address_is_a_conflict(self, backend: NetworkBackend) -> None:
        bare = NetworkAttachment(mac="52:54:00:00:00:01")
        with pytest.raises(Conflict):
            backend.guest_endpoint("net-bare", bare, [], 22)

    def test_host_port_check(self, backend: NetworkBackend, busy_port: int) -> None:
        assert backend.check_host_port(PortForward(host_port=busy_port, guest_port=80))
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", 0))
            free = sock.getsockname()[1]
        # The port was free an instant ago: a backend that says it is not is wrong.
        assert backend.check_host_port(PortForward(host_port=free, guest_port=80)) is None

    def test_nothing_is_orphaned_after_release(self, backend: NetworkBackend) -> None:
        attachment = backend.allocate("net-orphan")
        backend.plug("net-orphan", attachment)
        backend.unplug("net-orphan", attachment)
        backend.release("net-orphan")
        assert backend.orphans() == []


class RegistryConformance(BackendConformance):
    """Registry backends. Needs ``reference``: a factory ``tag -> Reference`` into a
    registry the test may write to."""

    @pytest.fixture
    def image_files(self, tmp_path: Path) -> ImageFiles:
        disk, kernel = tmp_path / "disk.raw", tmp_path / "vmlinuz"
        with disk.open("wb") as f:
            f.write(os.urandom(MiB))
            f.seek(9 * MiB)  # a hole in the middle
            f.write(os.urandom(MiB))
        kernel.write_bytes(os.urandom(64 * 1024))
        return ImageFiles(disk=disk, disk_format="raw", kernel=kernel, cmdline="console=ttyS0")

    def test_push_then_pull_gives_the_same_files_and_digest(
        self,
        backend: RegistryBackend,
        reference: Callable[[str], Reference],
        image_files: ImageFiles,
        tmp_path: Path,
    ) -> None:
        ref = reference("roundtrip")
        seen: list[tuple[int, int]] = []
        digest = backend.push(image_files, ref, lambda done, total: seen.append((done, total)))
        assert digest.startswith("sha256:") and seen
        assert backend.manifest_digest(ref) == digest
        workdir = tmp_path / "pull"
        workdir.mkdir()
        pulled = backend.pull(ref, workdir, lambda done, total: None)
        assert pulled.digest == digest
        assert pulled.disk is not None and image_files.disk is not None
        assert pulled.disk.read_bytes() == image_files.disk.read_bytes()
        assert pulled.kernel is not None and image_files.kernel is not None
        assert pulled.kernel.read_bytes() == image_files.kernel.read_bytes()
        assert pulled.cmdline == "console=ttyS0" and pulled.disk_format == "raw"

    def test_missing_reference(
        self, backend: RegistryBackend, reference: Callable[[str], Reference], tmp_path: Path
    ) -> None:
        ref = reference("never-pushed")
        assert backend.manifest_digest(ref) is None
        with pytest.raises(MedaError):
            backend.pull(ref, tmp_path, lambda done, total: None)


#: Seconds an agent suite's command may take before the test calls it hung.
AGENT_WAIT = 30.0


def finish(session: AgentSession) -> tuple[ExecExit, bytes, bytes]:
    """Read ``session`` to its end: how it ended, its stdout and its stderr."""
    out = {ExecStream.STDOUT: bytearray(), ExecStream.STDERR: bytearray()}
    try:
        for event in session.events(timeout=AGENT_WAIT):
            if isinstance(event, ExecOutput):
                out[event.stream] += event.data
            else:
                return event, bytes(out[ExecStream.STDOUT]), bytes(out[ExecStream.STDERR])
    finally:
        session.close()
    raise AssertionError("the session's events ended without an exit")


def sh(script: str, **env: str) -> ExecCommand:
    return ExecCommand(("sh", "-c", script), tuple(env.items()))


class AgentConformance(BackendConformance):
    """Agent backends, against a live guest's ``channel``. Commands use POSIX ``sh`` and
    busybox-level tools only, so a busybox guest runs the suite."""

    @pytest.fixture
    def dead_channel(self, tmp_path: Path) -> AgentChannel:
        return AgentChannel(tmp_path / "nobody-answers.sock")

    def test_ping(self, backend: AgentBackend, channel: AgentChannel) -> None:
        assert backend.ping(channel, AGENT_WAIT)

    def test_ping_on_a_dead_channel_is_false_within_its_timeout(
        self, backend: AgentBackend, dead_channel: AgentChannel
    ) -> None:
        started = time.monotonic()
        assert backend.ping(dead_channel, 1.0) is False
        assert time.monotonic() - started < 3.0

    def test_exit_codes(self, backend: AgentBackend, channel: AgentChannel) -> None:
        for code in (0, 1, 7, 255):
            end, _, _ = finish(backend.exec(channel, sh(f"exit {code}")))
            assert (end.code, end.signal) == (code, None)

    def test_stdout_and_stderr_are_apart(
        self, backend: AgentBackend, channel: AgentChannel
    ) -> None:
        end, out, err = finish(backend.exec(channel, sh("echo out; echo err >&2; echo more")))
        assert (end.code, out, err) == (0, b"out\nmore\n", b"err\n")

    def test_stdin_then_end_of_file(self, backend: AgentBackend, channel: AgentChannel) -> None:
        if Capability.STDIN not in backend.capabilities:
            pytest.skip("no stdin")
        session = backend.exec(channel, ExecCommand(("cat",)))
        data = bytes(range(256)) * 64
        session.send_stdin(data[:5000])
        session.send_stdin(data[5000:])
        session.close_stdin()
        end, out, _ = finish(session)
        assert (end.code, out) == (0, data)

    def test_env(self, backend: AgentBackend, channel: AgentChannel) -> None:
        end, out, _ = finish(
            backend.exec(channel, sh('printf %s "$MEDA_PROBE"', MEDA_PROBE="a b=c"))
        )
        assert (end.code, out) == (0, b"a b=c")

    def test_cwd(self, backend: AgentBackend, channel: AgentChannel, writable_dir: str) -> None:
        backend.write_file(channel, f"{writable_dir}/cwd-probe", [b"here"])
        command = ExecCommand(("cat", "cwd-probe"), cwd=writable_dir)
        end, out, _ = finish(backend.exec(channel, command))
        assert (end.code, out) == (0, b"here")

    def test_a_missing_program_exits_127(
        self, backend: AgentBackend, channel: AgentChannel
    ) -> None:
        end, _, _ = finish(backend.exec(channel, ExecCommand(("meda-no-such-program",))))
        assert end.code == 127

    def test_kill(self, backend: AgentBackend, channel: AgentChannel) -> None:
        session = backend.exec(channel, ExecCommand(("sleep", "60")))
        started = time.monotonic()
        session.kill()
        end, _, _ = finish(session)
        assert end.code is None and end.signal == 9
        assert time.monotonic() - started < 10

    def test_output_arrives_before_the_end(
        self, backend: AgentBackend, channel: AgentChannel
    ) -> None:
        session = backend.exec(channel, sh("echo first; sleep 10; echo last"))
        started = time.monotonic()
        try:
            first = next(session.events(timeout=AGENT_WAIT))
            assert isinstance(first, ExecOutput) and first.data.startswith(b"first")
            assert time.monotonic() - started < 8
        finally:
            session.close()

    def test_two_sessions_at_once(self, backend: AgentBackend, channel: AgentChannel) -> None:
        one = backend.exec(channel, sh("read line; echo one:$line"))
        two = backend.exec(channel, sh("read line; echo two:$line"))
        if Capability.STDIN in backend.capabilities:
            two.send_stdin(b"B\n")
            one.send_stdin(b"A\n")
        one.close_stdin()
        two.close_stdin()
        assert finish(two)[1].startswith(b"two:")
        assert finish(one)[1].startswith(b"one:")

    def test_file_round_trip(
        self, backend: AgentBackend, channel: AgentChannel, writable_dir: str
    ) -> None:
        if Capability.FILES not in backend.capabilities:
            pytest.skip("no files")
        data = os.urandom(300 * 1024) + bytes(range(256))
        path = f"{writable_dir}/round-trip.bin"
        chunks = [data[i : i + 70000] for i in range(0, len(data), 70000)]
        assert backend.write_file(channel, path, chunks, mode=0o600) == len(data)
        back = b"".join(backend.read_file(channel, path))
        assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
        listing = ExecCommand(("ls", "-l", "round-trip.bin"), cwd=writable_dir)
        _, out, _ = finish(backend.exec(channel, listing))  # paths travel as the cwd only
        assert out.startswith(b"-rw-------")

    def test_a_missing_file_is_not_found(
        self, backend: AgentBackend, channel: AgentChannel, writable_dir: str
    ) -> None:
        if Capability.FILES not in backend.capabilities:
            pytest.skip("no files")
        with pytest.raises(NotFound):
            b"".join(backend.read_file(channel, f"{writable_dir}/no-such-file"))
