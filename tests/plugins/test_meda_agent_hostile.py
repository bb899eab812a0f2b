"""The meda agent's host side against hostile guests: clean failures, in time, in bounded memory."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meda_agent import MedaAgent, link, protocol
from meda_agent.protocol import Type
from meda_core.backends.roles import BackendContext
from meda_core.plugin import (
    AgentChannel,
    BackendError,
    ExecCommand,
    ExecExit,
    ExecOutput,
    ExecStream,
    InvalidRequest,
)

Behaviour = Callable[[socket.socket, bytes], None]


def frame(type: int, session: int, body: bytes = b"") -> bytes:
    return struct.pack(">IBI", len(body), type, session) + body


def ready(nonce: bytes, version: int = protocol.VERSION) -> bytes:
    return frame(Type.READY, 0, b"MEDA" + struct.pack(">I", version) + nonce)


def read_hello(conn: socket.socket) -> bytes:
    hello = b""
    while len(hello) < 9 + 24:
        data = conn.recv(9 + 24 - len(hello))
        if not data:
            raise ConnectionError
        hello += data
    return hello[-16:]


def read_frame(conn: socket.socket) -> tuple[int, int, bytes]:
    head = conn.recv(9, socket.MSG_WAITALL)
    length, type, session = struct.unpack(">IBI", head)
    return type, session, conn.recv(length, socket.MSG_WAITALL) if length else b""


@pytest.fixture
def fake_guest(tmp_path: Path) -> Iterator[Callable[[Behaviour], AgentChannel]]:
    """A "guest" on a unix socket that answers every connection as ``behaviour`` says."""
    servers: list[socket.socket] = []
    stop = threading.Event()

    def start(behaviour: Behaviour) -> AgentChannel:
        path = tmp_path / f"guest-{len(servers)}.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen(1)
        servers.append(server)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn, contextlib.suppress(OSError):
                    behaviour(conn, read_hello(conn))

        threading.Thread(target=serve, daemon=True).start()
        return AgentChannel(socket=path)

    yield start
    stop.set()
    for server in servers:
        server.shutdown(socket.SHUT_RDWR)
        server.close()


@pytest.fixture
def agent(backend_context: BackendContext, monkeypatch: pytest.MonkeyPatch) -> MedaAgent:
    backend = MedaAgent(backend_context)
    monkeypatch.setattr(backend, "connect_timeout", 1.0)
    monkeypatch.setattr(backend, "reply_timeout", 1.0)
    return backend


def silent(conn: socket.socket, nonce: bytes) -> None:
    while conn.recv(65536):
        pass


def greeted_then(after: Callable[[socket.socket], None]) -> Behaviour:
    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        after(conn)

    return behaviour


def timed(seconds: float) -> Callable[[Callable[[], object]], object]:
    def call(action: Callable[[], object]) -> object:
        started = time.monotonic()
        try:
            return action()
        finally:
            assert time.monotonic() - started < seconds, "took longer than its timeout"

    return call


def test_a_guest_that_never_answers_costs_the_timeout(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    channel = fake_guest(silent)
    assert timed(2)(lambda: agent.ping(channel, 0.5)) is False
    with pytest.raises(TimeoutError):
        timed(3)(lambda: agent.exec(channel, ExecCommand(argv=("true",))))


def test_a_greeted_guest_that_then_ignores_a_command(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    channel = fake_guest(greeted_then(lambda conn: silent(conn, b"")))
    with pytest.raises(TimeoutError):
        timed(3)(lambda: agent.exec(channel, ExecCommand(argv=("true",))))
    assert timed(2)(lambda: agent.ping(channel, 0.5)) is False


def test_a_ping_unanswered_on_a_greeted_link_makes_the_next_one_greet_again(
    agent: MedaAgent,
    fake_guest,  # type: ignore[no-untyped-def]
) -> None:
    """As when the agent restarts inside the guest behind a connection the host holds:
    the first link stays silent; after the failed ping a new connection is greeted."""
    connections = [0]

    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        connections[0] += 1
        conn.sendall(ready(nonce))
        if connections[0] == 1:
            silent(conn, nonce)
            return
        _, session, body = read_frame(conn)
        conn.sendall(frame(Type.PONG, session, body))
        silent(conn, nonce)

    channel = fake_guest(behaviour)
    assert agent.ping(channel, 0.5) is False
    assert agent.ping(channel, 2) is True
    assert connections[0] == 2


def test_garbage_before_the_answer_is_skipped(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    """Stale bytes of an earlier connection, even ones that look like frames, then the
    answer to this hello: the link comes up."""

    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(os.urandom(100_000) + ready(b"x" * 16) + frame(Type.PONG, 1, b"old"))
        conn.sendall(ready(nonce))
        _, session, body = read_frame(conn)
        conn.sendall(frame(Type.PONG, session, body))
        silent(conn, nonce)

    assert agent.ping(fake_guest(behaviour), 2)


def test_only_garbage_fails_within_the_timeout(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        for _ in range(400):
            conn.sendall(os.urandom(65536))

    tracemalloc.start()
    try:
        assert timed(3)(lambda: agent.ping(fake_guest(behaviour), 2)) is False
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (struct.pack(">IBI", 0x7FFFFFFF, Type.STDOUT, 1), "frame of 2147483647 bytes"),
        (frame(99, 1, b"?"), "unknown type 99"),
        (frame(Type.EXIT, 1, b"\0\0\0"), "EXIT frame of 3 bytes"),
        (frame(Type.HELLO, 1, b""), "unknown type 1"),  # a host's frame, from the guest
    ],
)
def test_a_bad_frame_breaks_the_link_cleanly(
    agent: MedaAgent,
    fake_guest,  # type: ignore[no-untyped-def]
    bad: bytes,
    message: str,
) -> None:
    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        _, session, _ = read_frame(conn)
        conn.sendall(frame(Type.STARTED, session) + bad)
        silent(conn, nonce)

    channel = fake_guest(behaviour)
    session = agent.exec(channel, ExecCommand(argv=("true",)))
    with pytest.raises(BackendError, match=message):
        timed(2)(lambda: list(session.events(timeout=5)))
    session.close()


def test_a_flood_for_sessions_nobody_opened_is_dropped(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        chunk = frame(Type.STDOUT, 999, b"z" * 65536) * 16
        for _ in range(64):  # 64 MiB
            conn.sendall(chunk)
        _, session, body = read_frame(conn)
        conn.sendall(frame(Type.PONG, session, body))
        silent(conn, nonce)

    tracemalloc.start()
    try:
        assert agent.ping(fake_guest(behaviour), 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


def test_a_guest_past_the_output_window_breaks_the_link(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    """The guest floods a command's output that nobody reads: the host holds at most the
    window, never waits for the caller, and gives the link up at the first byte past it."""
    sent = [0]

    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        _, session, _ = read_frame(conn)
        conn.sendall(frame(Type.STARTED, session))
        conn.settimeout(1.0)
        chunk = frame(Type.STDOUT, session, b"z" * 65536)
        with contextlib.suppress(OSError):
            while sent[0] < 64 * 1024 * 1024:
                conn.sendall(chunk)
                sent[0] += 65536
        silent(conn, nonce)

    tracemalloc.start()
    try:
        session = agent.exec(fake_guest(behaviour), ExecCommand(argv=("yes",)))
        time.sleep(1)
        peak = tracemalloc.get_traced_memory()[1]
        with pytest.raises(BackendError, match="beyond its window"):
            list(session.events(timeout=1))
        session.close()
    finally:
        tracemalloc.stop()
    assert sent[0] > protocol.OUTPUT_WINDOW
    assert peak < protocol.OUTPUT_WINDOW + 8 * 1024 * 1024


def _broken_after_a_command(channel: AgentChannel) -> str:
    """Why the link to ``channel``'s guest broke (within 2 s) once a command was sent."""
    joined = link.link_for(channel, 1)
    session = joined.open(Type.EXEC, protocol.exec_body(("true",), (), None))
    deadline = time.monotonic() + 2
    while joined.broken is None and time.monotonic() < deadline:
        time.sleep(0.01)
    joined.release(session)
    return str(joined.broken)


def test_a_guest_that_floods_a_session_with_control_frames(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        _, session, _ = read_frame(conn)
        conn.sendall(frame(Type.STARTED, session) * (link.CONTROL_BYTES // 9 + 1))
        silent(conn, nonce)

    assert "flooded" in _broken_after_a_command(fake_guest(behaviour))


@pytest.mark.parametrize("kind", [Type.STDOUT, Type.STDERR, Type.FILE_DATA])
def test_a_guest_that_sends_empty_data_frames_breaks_the_link(fake_guest, kind: Type) -> None:  # type: ignore[no-untyped-def]
    """An empty output frame is free for the guest and not for the host (a queued
    event, a timeout started again): the first one ends the link."""

    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        _, session, _ = read_frame(conn)
        conn.sendall(frame(Type.STARTED, session) + frame(kind, session) * 1000)
        silent(conn, nonce)

    assert "empty data frame" in _broken_after_a_command(fake_guest(behaviour))


def test_a_slow_ping_leaves_the_commands_of_a_busy_agent_running(
    agent: MedaAgent,
    fake_guest,  # type: ignore[no-untyped-def]
) -> None:
    """A ping that times out while the guest is sending another session's output does
    not close the link: only a link that hears nothing is given up."""

    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        _, session, _ = read_frame(conn)  # the command; pings after it go unanswered
        threading.Thread(target=silent, args=(conn, nonce), daemon=True).start()
        conn.sendall(frame(Type.STARTED, session))
        for _ in range(30):
            conn.sendall(frame(Type.STDOUT, session, b"tick\n"))
            time.sleep(0.05)
        conn.sendall(frame(Type.EXIT, session, b"\0" * 8))
        time.sleep(1)

    channel = fake_guest(behaviour)
    session = agent.exec(channel, ExecCommand(argv=("ticker",)))
    assert agent.ping(channel, 0.3) is False
    events = list(session.events(timeout=5))
    session.close()
    assert sum(len(e.data) for e in events if isinstance(e, ExecOutput)) == 30 * 5
    assert isinstance(events[-1], ExecExit)


def test_a_guest_granted_output_back_as_its_caller_reads(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    """The guest sends its whole window, then only what the host grants back: the caller
    reads three windows' worth, and the grants add up to what it took."""
    granted = [0]
    window = protocol.OUTPUT_WINDOW

    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        _, session, _ = read_frame(conn)
        conn.sendall(frame(Type.STARTED, session))
        credit, sent = window, 0
        while sent < 3 * window:
            while credit:
                size = min(credit, 65536, 3 * window - sent)
                conn.sendall(frame(Type.STDOUT, session, b"z" * size))
                credit, sent = credit - size, sent + size
            if sent < 3 * window:
                type, _, body = read_frame(conn)
                assert type == Type.OUTPUT_ACK
                credit += int.from_bytes(body, "big")
                granted[0] += int.from_bytes(body, "big")
        conn.sendall(frame(Type.EXIT, session, b"\0" * 8))
        silent(conn, nonce)

    session = agent.exec(fake_guest(behaviour), ExecCommand(argv=("yes",)))
    events = list(timed(5)(lambda: list(session.events(timeout=2))))  # type: ignore[arg-type]
    session.close()
    assert sum(len(e.data) for e in events if isinstance(e, ExecOutput)) == 3 * window
    assert 2 * window <= granted[0] <= 3 * window


def test_a_guest_of_another_protocol_version_is_refused(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    channel = fake_guest(lambda conn, nonce: (conn.sendall(ready(nonce, 1)), silent(conn, nonce)))
    with pytest.raises(BackendError, match="version 1, not"):
        agent.exec(channel, ExecCommand(argv=("true",)))
    assert agent.ping(channel, 1) is False


#: How a guest hangs up after its first output: before it sends it, then after; each way
#: the host may notice first by reading (EOF, or a reset: its output grant was left
#: unread) or by writing that grant (EPIPE).
HANG_UPS: dict[str, tuple[Callable[[socket.socket], object], Callable[[socket.socket], object]]] = {
    "closes": (lambda conn: None, lambda conn: None),
    "stops reading": (lambda conn: conn.shutdown(socket.SHUT_RD), lambda conn: time.sleep(2)),
    "leaves the grant unread": (lambda conn: None, lambda conn: select.select([conn], [], [], 5)),
}


@pytest.mark.parametrize("way", HANG_UPS)
def test_a_guest_that_hangs_up_fails_open_sessions(
    agent: MedaAgent,
    fake_guest,  # type: ignore[no-untyped-def]
    way: str,
) -> None:
    before, after = HANG_UPS[way]

    def behaviour(conn: socket.socket, nonce: bytes) -> None:
        conn.sendall(ready(nonce))
        _, session, _ = read_frame(conn)
        before(conn)
        conn.sendall(frame(Type.STARTED, session) + frame(Type.STDOUT, session, b"partial"))
        after(conn)

    session = agent.exec(fake_guest(behaviour), ExecCommand(argv=("true",)))
    events = session.events(timeout=5)
    try:
        assert next(events) == ExecOutput(ExecStream.STDOUT, b"partial")
        with pytest.raises(BackendError, match="closed the connection"):
            next(events)
    finally:
        session.close()


def test_a_vsock_that_refuses_connect(agent: MedaAgent, fake_guest) -> None:  # type: ignore[no-untyped-def]
    channel = fake_guest(silent)
    refused = AgentChannel(socket=channel.socket, vsock_port=1024)
    assert timed(2)(lambda: agent.ping(refused, 1)) is False


# -- the wire format on its own --


def test_the_decoder_checks_a_length_before_it_waits_for_the_body() -> None:
    decoder = protocol.Decoder()
    with pytest.raises(BackendError, match="cap"):
        list(decoder.feed(struct.pack(">IBI", protocol.MAX_BODY + 1, Type.STDOUT, 1)))
    frames = protocol.Decoder().feed(frame(Type.STDOUT, 7, b"ab") + frame(Type.EXIT, 7, b"\0" * 8))
    assert [(f.type, f.session, f.body) for f in frames] == [
        (Type.STDOUT, 7, b"ab"),
        (Type.EXIT, 7, b"\0" * 8),
    ]


def test_commands_the_host_will_not_send() -> None:
    with pytest.raises(InvalidRequest):
        protocol.exec_body((), (), None)
    with pytest.raises(InvalidRequest, match="NUL"):
        protocol.exec_body(("echo", "a\0b"), (), None)
    with pytest.raises(InvalidRequest, match="name"):
        protocol.exec_body(("env",), (("A=B", "c"),), None)
    with pytest.raises(InvalidRequest, match="at most"):
        protocol.encode(
            Type.EXEC, 1, protocol.exec_body(("echo", "x" * protocol.MAX_BODY), (), None)
        )
    assert protocol.exec_body(("ls", "-l"), (("A", "1"),), "/tmp") == (
        b"\0\x02\0\x01/tmp\0ls\0-l\0A=1\0"
    )
