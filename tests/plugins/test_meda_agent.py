"""The meda agent backend against the real guest program, run on the host with --listen."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meda_agent import MedaAgent, link, meda_register_backends, protocol
from meda_agent.build import agent_binary
from meda_core.backends.roles import BackendContext
from meda_core.plugin import (
    AGENT_PORT_NAME,
    AGENT_VSOCK_PORT,
    AgentChannel,
    AgentSession,
    BackendError,
    BackendUnavailable,
    Capability,
    ExecCommand,
    ExecExit,
    ExecOutput,
    ExecStream,
    InvalidRequest,
    NotFound,
)
from meda_core.testing.conformance import AgentConformance
from tests.plugins.conftest import RunningAgent

StartAgent = Callable[..., RunningAgent]


@pytest.fixture
def agent(backend_context: BackendContext) -> MedaAgent:
    return MedaAgent(backend_context)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder of its own for what a test writes through the agent."""
    folder = tmp_path / "files"
    folder.mkdir()
    return folder


@pytest.fixture
def channel(run_agent: StartAgent) -> AgentChannel:
    return run_agent().channel


def run(
    agent: MedaAgent, channel: AgentChannel, *argv: str, **kw: object
) -> tuple[bytes, bytes, ExecExit]:
    """Run a command to its end: stdout, stderr, exit."""
    session = agent.exec(channel, ExecCommand(argv=argv, **kw))  # type: ignore[arg-type]
    out = {ExecStream.STDOUT: b"", ExecStream.STDERR: b""}
    try:
        for event in session.events(timeout=20):
            if isinstance(event, ExecOutput):
                out[event.stream] += event.data
            else:
                return out[ExecStream.STDOUT], out[ExecStream.STDERR], event
    finally:
        session.close()
    raise AssertionError("no exit")


def test_it_registers_with_every_agent_capability() -> None:
    added: list[type] = []

    class Registry:
        def add(self, backend: type) -> None:
            added.append(backend)

    meda_register_backends(Registry())  # type: ignore[arg-type]
    assert added == [MedaAgent] and MedaAgent.name == "meda"
    assert MedaAgent.capabilities == {
        Capability.EXEC_STREAM,
        Capability.STDIN,
        Capability.FILES,
        Capability.IDENTITY,
    }


def test_exit_codes_and_the_two_streams_apart(agent: MedaAgent, channel: AgentChannel) -> None:
    assert agent.ping(channel, 5)
    out, err, end = run(agent, channel, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (out, err, end) == (b"out\n", b"err\n", ExecExit(code=3))
    assert run(agent, channel, "true")[2] == ExecExit(code=0)


def test_env_and_cwd(agent: MedaAgent, channel: AgentChannel, tmp_path: Path) -> None:
    out, _, end = run(
        agent,
        channel,
        "sh",
        "-c",
        'echo "$GREETING $PWD"',
        env=(("GREETING", "hi"),),
        cwd=str(tmp_path),
    )
    assert out == f"hi {tmp_path}\n".encode() and end.code == 0


def test_a_missing_cwd_is_refused(agent: MedaAgent, channel: AgentChannel) -> None:
    """The caller's mistake, 400, not the backend failing."""
    with pytest.raises(InvalidRequest, match="No such file"):
        agent.exec(channel, ExecCommand(argv=("true",), cwd="/no/such/dir"))


def test_a_missing_program_exits_127(agent: MedaAgent, channel: AgentChannel) -> None:
    _, err, end = run(agent, channel, "no-such-program-here")
    assert end == ExecExit(code=127) and b"no-such-program-here" in err


def test_stdin_streams_and_ends(agent: MedaAgent, channel: AgentChannel) -> None:
    session = agent.exec(channel, ExecCommand(argv=("cat",)))
    try:
        session.send_stdin(b"first\n")
        events = session.events(timeout=10)
        assert next(events) == ExecOutput(ExecStream.STDOUT, b"first\n")  # before EOF
        big = os.urandom(3 * 1024 * 1024)  # over the stdin window: acknowledged as it goes
        sender = threading.Thread(target=lambda: (session.send_stdin(big), session.close_stdin()))
        sender.start()
        got = b"".join(e.data for e in events if isinstance(e, ExecOutput))
        sender.join()
        assert got == big
    finally:
        session.close()


def test_kill_ends_a_long_command(agent: MedaAgent, channel: AgentChannel) -> None:
    session = agent.exec(channel, ExecCommand(argv=("sleep", "60")))
    started = time.monotonic()
    try:
        session.kill()
        assert list(session.events(timeout=10)) == [ExecExit(code=None, signal=9)]
    finally:
        session.close()
    assert time.monotonic() - started < 5


def test_ten_megabytes_arrive_while_the_command_runs(
    agent: MedaAgent, channel: AgentChannel, tmp_path: Path
) -> None:
    """The command writes 1 MB, then waits for a file this test makes only once the first
    bytes have arrived, then writes 9 MB more: a buffered exec would hang here."""
    go = tmp_path / "go"
    script = (
        "head -c 1000000 /dev/zero; while [ ! -e go ]; do sleep 0.01; done; "
        "head -c 9000000 /dev/zero"
    )
    session = agent.exec(channel, ExecCommand(argv=("sh", "-c", script), cwd=str(tmp_path)))
    total, exit_ = 0, None
    try:
        for event in session.events(timeout=10):
            if isinstance(event, ExecOutput):
                total += len(event.data)
                assert len(event.data) <= 64 * 1024
                go.touch()
            else:
                exit_ = event
    finally:
        session.close()
    assert total == 10_000_000 and exit_ == ExecExit(code=0)


def test_a_download_nobody_reads_stalls_only_itself(
    agent: MedaAgent, channel: AgentChannel, tmp_path: Path
) -> None:
    """A caller that stops reading a file (a GET /files whose client went quiet) leaves
    the link's reader free: pings answer and another caller's command runs to its end;
    the download then goes on where it stopped, whole."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    other = agent.exec(channel, ExecCommand(argv=("sh", "-c", "sleep 1; echo done")))
    chunks = agent.read_file(channel, str(big))
    try:
        digest = hashlib.sha256(next(chunks))
        time.sleep(1.5)  # the guest has long used up the download's window
        started = time.monotonic()
        assert agent.ping(channel, 2)
        assert time.monotonic() - started < 1
        assert list(other.events(timeout=10)) == [
            ExecOutput(ExecStream.STDOUT, b"done\n"),
            ExecExit(code=0),
        ]
    finally:
        other.close()
    for chunk in chunks:
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()


def _exactly(conn: socket.socket, size: int) -> bytes:
    """``size`` bytes (a socket with a timeout is non-blocking underneath: MSG_WAITALL may
    return fewer)."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "the agent hung up"
        data += chunk
    return data


def _frames_until_quiet(conn: socket.socket, quiet: float) -> list[tuple[int, int, bytes]]:
    """The frames the agent sends until it sends nothing for ``quiet`` seconds."""
    frames: list[tuple[int, int, bytes]] = []
    conn.settimeout(quiet)
    try:
        while True:
            head = conn.recv(1)  # only a quiet start of a frame ends the wait
            conn.settimeout(5)
            head += _exactly(conn, protocol.HEADER.size - 1)
            length, type, session = protocol.HEADER.unpack(head)
            frames.append((type, session, _exactly(conn, length) if length else b""))
            conn.settimeout(quiet)
    except TimeoutError:
        return frames


def test_the_agent_sends_output_only_within_its_window(channel: AgentChannel) -> None:
    """On the wire: a command's output stops at the window until the host grants more,
    and pings are answered meanwhile; a grant past the window is refused."""
    size = 3 * protocol.OUTPUT_WINDOW
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(channel.socket))
        _greet(conn)
        body = protocol.exec_body(("head", "-c", str(size), "/dev/zero"), (), None)
        conn.sendall(protocol.encode(protocol.Type.EXEC, 1, body))
        frames = _frames_until_quiet(conn, 0.5)
        assert frames[0] == (protocol.Type.STARTED, 1, b"")
        assert sum(len(b) for t, _, b in frames if t == protocol.Type.STDOUT) == (
            protocol.OUTPUT_WINDOW
        )
        assert protocol.Type.EXIT not in [t for t, _, _ in frames]
        conn.sendall(protocol.encode(protocol.Type.PING, 2, b"still"))
        assert _frames_until_quiet(conn, 0.5) == [(protocol.Type.PONG, 2, b"still")]
        got, types = protocol.OUTPUT_WINDOW, []
        while protocol.Type.EXIT not in types:
            grant = protocol.OUTPUT_WINDOW.to_bytes(4, "big")
            conn.sendall(protocol.encode(protocol.Type.OUTPUT_ACK, 1, grant))
            frames = _frames_until_quiet(conn, 0.5)
            types = [t for t, _, _ in frames]
            got += sum(len(b) for t, _, b in frames if t == protocol.Type.STDOUT)
        assert got == size
        body = protocol.exec_body(("sleep", "10"), (), None)
        conn.sendall(protocol.encode(protocol.Type.EXEC, 3, body))
        conn.sendall(protocol.encode(protocol.Type.OUTPUT_ACK, 3, b"\0\0\0\1"))
        started, error = _frames_until_quiet(conn, 0.5)
        assert started == (protocol.Type.STARTED, 3, b"")
        assert error[:2] == (protocol.Type.ERROR, 3) and b"output window" in error[2]


def test_two_commands_at_once(agent: MedaAgent, channel: AgentChannel) -> None:
    waiting = agent.exec(channel, ExecCommand(argv=("cat",)))
    try:
        assert run(agent, channel, "echo", "second")[0] == b"second\n"  # while cat waits
        waiting.send_stdin(b"first")
        waiting.close_stdin()
        assert list(waiting.events(timeout=10)) == [
            ExecOutput(ExecStream.STDOUT, b"first"),
            ExecExit(code=0),
        ]
    finally:
        waiting.close()


def test_a_binary_file_round_trip(agent: MedaAgent, channel: AgentChannel, files: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)
    target = str(files / "blob.bin")
    pieces = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
    assert agent.write_file(channel, target, pieces) == len(data)
    back = hashlib.sha256()
    for chunk in agent.read_file(channel, target):
        back.update(chunk)
    assert back.hexdigest() == hashlib.sha256(data).hexdigest()
    assert [p.name for p in files.iterdir()] == ["blob.bin"]  # no temporary file left


def test_write_sets_mode_and_owner(agent: MedaAgent, channel: AgentChannel, tmp_path: Path) -> None:
    target = tmp_path / "owned"
    agent.write_file(channel, str(target), [b"x"], mode=0o640, owner=(1234, 5678))
    stat = target.stat()
    assert (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) == (0o640, 1234, 5678)
    agent.write_file(channel, str(target), [b"yy"])  # replaced whole, default mode
    assert target.read_bytes() == b"yy" and target.stat().st_mode & 0o7777 == 0o644


def test_file_errors(agent: MedaAgent, channel: AgentChannel, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        list(agent.read_file(channel, str(tmp_path / "missing")))
    with pytest.raises(InvalidRequest):
        list(agent.read_file(channel, str(tmp_path)))
    with pytest.raises(NotFound):
        agent.write_file(channel, str(tmp_path / "no" / "dir"), [b"x"])
    with pytest.raises(InvalidRequest, match="absolute"):
        agent.write_file(channel, "relative/path", [b"x"])
    assert agent.ping(channel, 5)  # errors leave the link usable


def test_a_write_abandoned_midway_leaves_nothing(
    agent: MedaAgent, channel: AgentChannel, files: Path
) -> None:
    def chunks() -> object:
        yield b"part"
        raise RuntimeError("the client went away")

    with pytest.raises(RuntimeError):
        agent.write_file(channel, str(files / "half"), chunks())  # type: ignore[arg-type]
    assert agent.ping(channel, 5)
    assert list(files.iterdir()) == []


def test_a_broken_connection_kills_its_commands_and_is_made_again(
    agent: MedaAgent, channel: AgentChannel
) -> None:
    session = agent.exec(channel, ExecCommand(argv=("sh", "-c", "echo $$; exec sleep 60")))
    events = session.events(timeout=10)
    first = next(events)
    assert isinstance(first, ExecOutput)
    pid = int(first.data)
    link.link_for(channel, 5).close()  # as when the socket breaks
    with pytest.raises(BackendError):
        next(events)
    session.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and not _zombie(pid):
        assert time.monotonic() < deadline, "the agent did not kill the command"
        time.sleep(0.05)
    assert agent.ping(channel, 5)
    assert run(agent, channel, "echo", "again")[0] == b"again\n"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def test_ping_is_false_on_a_dead_channel(agent: MedaAgent, tmp_path: Path) -> None:
    started = time.monotonic()
    assert not agent.ping(AgentChannel(socket=tmp_path / "none.sock"), 1)
    assert time.monotonic() - started < 2


def test_a_closed_session_kills_its_command(
    agent: MedaAgent, channel: AgentChannel, files: Path
) -> None:
    session: AgentSession = agent.exec(
        channel, ExecCommand(argv=("sh", "-c", "sleep 1; touch late"), cwd=str(files))
    )
    session.close()
    time.sleep(1.5)
    assert not (files / "late").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_identity_in_a_namespace_of_its_own(
    agent: MedaAgent, run_agent: StartAgent, tmp_path: Path
) -> None:
    """Only inside a new UTS namespace, on /etc files under a temporary root: the host's
    hostname and files are never touched."""
    etc = tmp_path / "etc"
    (etc / "ssh").mkdir(parents=True)
    (etc / "hostname").write_text("template\n")
    (etc / "machine-id").write_text("0" * 32 + "\n")
    keygen = shutil.which("ssh-keygen") is not None
    if keygen:
        (etc / "ssh" / "ssh_host_ed25519_key").write_text("the template's key")
    ours = socket.gethostname()
    channel = run_agent("--root", str(tmp_path), prefix=["unshare", "--uts"]).channel
    agent.set_identity(channel, "clone-1")
    assert run(agent, channel, "hostname")[0] == b"clone-1\n"
    assert socket.gethostname() == ours
    assert (etc / "hostname").read_text() == "clone-1\n"
    machine_id = (etc / "machine-id").read_text().strip()
    assert len(machine_id) == 32 and machine_id != "0" * 32
    int(machine_id, 16)
    if keygen:
        assert (etc / "ssh" / "ssh_host_ed25519_key").read_text() != "the template's key"
    with pytest.raises(InvalidRequest):
        agent.set_identity(channel, "")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_a_slow_identity_does_not_stop_other_sessions(
    agent: MedaAgent, run_agent: StartAgent, tmp_path: Path
) -> None:
    """ssh-keygen is slow in an emulated guest: a stand-in that takes 2 s, while pings
    and commands keep being answered."""
    tools = tmp_path / "tools"
    tools.mkdir()
    keygen = tools / "ssh-keygen"
    keygen.write_text('#!/bin/sh\nsleep 2\necho new > "$3/etc/ssh/ssh_host_rsa_key"\n')
    keygen.chmod(0o755)
    (tmp_path / "etc" / "ssh").mkdir(parents=True)
    (tmp_path / "etc" / "ssh" / "ssh_host_rsa_key").write_text("old")
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    channel = run_agent("--root", str(tmp_path), prefix=["unshare", "--uts"], env=env).channel
    identity = threading.Thread(target=agent.set_identity, args=(channel, "slow"))
    identity.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert agent.ping(channel, 5) and run(agent, channel, "hostname")[0] == b"slow\n"
    assert time.monotonic() - started < 1
    identity.join()
    assert (tmp_path / "etc" / "ssh" / "ssh_host_rsa_key").read_text() == "new\n"


def test_the_program_is_built_once_and_needs_a_compiler(
    tmp_path: Path, agent_program: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert agent_binary(agent_program.parent) == agent_program  # reused
    assert os.access(agent_program, os.X_OK)
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(BackendUnavailable, match="apt-get install gcc libc6-dev"):
        agent_binary(tmp_path)
    monkeypatch.setenv("CC", "false")  # a compiler that fails: no static libc, say
    with pytest.raises(BackendUnavailable, match="apt-get install gcc libc6-dev"):
        agent_binary(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_guest_program_is_in_the_cache(agent: MedaAgent, backend_context: BackendContext) -> None:
    program = agent.guest_program()
    assert program.parent == backend_context.cache_dir and program.name.startswith("meda-agent-")
    assert agent.check_available().ok


def _greet(conn: socket.socket, junk: bytes = b"") -> None:
    nonce = os.urandom(16)
    conn.sendall(junk + protocol.hello(nonce))
    answer = conn.recv(9 + 24, socket.MSG_WAITALL)
    assert answer.endswith(nonce)


def test_the_agent_caps_what_the_host_sends(agent: MedaAgent, channel: AgentChannel) -> None:
    """Bytes before a hello are skipped; a frame over the cap ends the connection."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(channel.socket))
        _greet(conn, junk=os.urandom(5000))
        conn.sendall(struct.pack(">IBI", protocol.MAX_BODY + 1, protocol.Type.STDIN, 1))
        assert conn.recv(1) == b""
    assert agent.ping(channel, 5)


def test_sessions_are_capped(agent: MedaAgent, channel: AgentChannel) -> None:
    sessions = [agent.exec(channel, ExecCommand(argv=("cat",))) for _ in range(64)]
    try:
        with pytest.raises(BackendError, match="too many sessions"):
            agent.exec(channel, ExecCommand(argv=("cat",)))
    finally:
        for session in sessions:
            session.close()
    deadline = time.monotonic() + 10
    while True:  # the guest frees a slot once its killed command is reaped
        try:
            assert run(agent, channel, "true")[2].code == 0
            break
        except BackendError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_hello_on_a_greeted_connection_starts_it_afresh(channel: AgentChannel) -> None:
    """A guest restored from memory (a clone) may not see its template's host go: the new
    host's hello is answered, and the old host's commands end."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(channel.socket))
        _greet(conn)
        body = protocol.exec_body(("sh", "-c", "echo $$; exec sleep 60"), (), None)
        conn.sendall(protocol.encode(protocol.Type.EXEC, 7, body))
        decoder, frames = protocol.Decoder(), []
        while not any(f.type is protocol.Type.STDOUT for f in frames):
            frames += decoder.feed(conn.recv(4096))
        pid = int(next(f.body for f in frames if f.type is protocol.Type.STDOUT))
        _greet(conn)  # this hello is answered: the link is up again
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and not _zombie(pid):
            assert time.monotonic() < deadline, "the old host's command still runs"
            time.sleep(0.05)
        conn.sendall(protocol.encode(protocol.Type.PING, 8, b"again"))
        frames = []
        while not any(f.type is protocol.Type.PONG for f in frames):
            frames += decoder.feed(conn.recv(4096))


class TestTheProgramOnTheHost(AgentConformance):
    """The conformance suite against the guest program serving a unix socket here."""

    @pytest.fixture
    def backend(self, agent: MedaAgent) -> MedaAgent:
        return agent

    @pytest.fixture
    def writable_dir(self, files: Path) -> str:
        return str(files)


def _vsock_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((socket.VMADDR_CID_ANY, port))
        except OSError:
            return True
    return False


def _until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_an_agent_waiting_on_vsock_takes_its_port_when_it_appears(agent_program: Path) -> None:
    """Under systemd the agent may start before its virtio-serial port's driver is loaded:
    it listens on vsock meanwhile, and must take the port once it appears (a Debian guest
    under QEMU otherwise never answered). Run with empty /sys/class and /dev of its own;
    the port the test makes there is a FIFO, which a writer can open once the agent has."""
    try:
        taken = _vsock_port_taken(AGENT_VSOCK_PORT)
    except OSError:
        pytest.skip("no vsock on this host: the agent could not wait on it")
    if taken or shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip(f"needs root, unshare and vsock port {AGENT_VSOCK_PORT} free")
    script = (
        "mount -t tmpfs none /sys/class && mkdir /sys/class/virtio-ports"
        f" && mount -t tmpfs none /dev && exec {agent_program}"
    )
    agent = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    try:
        _until(lambda: _vsock_port_taken(AGENT_VSOCK_PORT), "the agent never listened on vsock")
        root = Path(f"/proc/{agent.pid}/root")
        port = root / "sys/class/virtio-ports/vport9p1"
        port.mkdir()
        os.mkfifo(root / "dev/vport9p1")
        (port / "name").write_text(f"{AGENT_PORT_NAME}\n")

        def opened() -> bool:
            try:
                os.close(os.open(root / "dev/vport9p1", os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                return False  # ENXIO: nobody has it open for reading yet
            return True

        _until(opened, "the agent never opened the port that appeared")
        _until(lambda: not _vsock_port_taken(AGENT_VSOCK_PORT), "the agent still listens on vsock")
    finally:
        agent.kill()
        agent.wait()
