"""One connection per guest agent channel, shared by every caller in the process.

A reader thread cuts the guest's stream into frames and hands each to its session's
inbox; it never waits for a caller. A session's output is flow-controlled: the guest sends
at most :data:`protocol.OUTPUT_WINDOW` bytes of it that the host has not granted back with
OUTPUT_ACK, and the host grants them back as the session's caller takes them, so a caller
that stops reading stalls only its own session. A connection that breaks fails every open
session with BackendError and is made anew on next use.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from meda_agent import protocol
from meda_agent.protocol import Frame, Type
from meda_core.plugin import AgentChannel, BackendError

#: Bytes of frames other than output (a header each) one session may hold unread: a
#: command gets a handful; more is a guest flooding the host.
CONTROL_BYTES = 64 * 1024
#: How long a write to the guest may make no progress before the link is given up.
SEND_TIMEOUT = 30.0


@dataclass
class Inbox:
    frames: deque[Frame] = field(default_factory=deque)
    #: Stdin bytes the guest accepts before its next STDIN_ACK.
    credit: int = protocol.STDIN_WINDOW
    #: Output bytes of the guest's window in use: received and not granted back.
    unacked: int = 0
    #: Output bytes the caller took that are not granted back yet.
    taken: int = 0
    control: int = 0


class Link:
    """A connected, greeted stream to one guest agent."""

    def __init__(self, sock: socket.socket, leftover: bytes, key: str) -> None:
        self.key = key
        self._sock = sock
        self._decoder = protocol.Decoder()
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._inboxes: dict[int, Inbox] = {}
        self._next = 1
        self.broken: BackendError | None = None
        #: When the guest last sent anything (monotonic): a link that hears is alive.
        self.last_heard = time.monotonic()
        for frame in self._decoder.feed(leftover):
            self._deliver(frame)
        self._reader = threading.Thread(target=self._read, name=f"agent {key}", daemon=True)
        self._reader.start()

    # -- sessions --

    def open(self, type: Type, body: bytes) -> int:
        """A new session, started with one frame; its id."""
        with self._cond:
            self._check()
            session = self._next
            self._next += 1
            self._inboxes[session] = Inbox()
        try:
            self.send(type, session, body)
        except BaseException:
            self.release(session)
            raise
        return session

    def receive(self, session: int, timeout: float | None) -> Frame:
        """The session's next frame; TimeoutError after ``timeout`` seconds of nothing."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                inbox = self._inboxes.get(session)
                if inbox is None:
                    raise BackendError("the agent session is closed")
                if inbox.frames:
                    frame = inbox.frames.popleft()
                    grant = self._taken(inbox, frame)
                    break
                self._check()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("the guest agent sent nothing in time")
                self._cond.wait(left)
        if grant:
            self._grant(session, grant)
        return frame

    @staticmethod
    def _taken(inbox: Inbox, frame: Frame) -> int:
        """Account for a frame the caller took; the output bytes to grant back now.

        Grants are sent once a chunk's worth is taken, or when the caller has taken all
        the output that arrived (``unacked`` is then all taken): a guest out of window
        always gets it back once its output is read."""
        if frame.type not in protocol.DATA:
            inbox.control -= len(frame.body) + protocol.HEADER.size
            return 0
        inbox.taken += len(frame.body)
        if inbox.taken < protocol.CHUNK and inbox.taken < inbox.unacked:
            return 0
        grant, inbox.taken = inbox.taken, 0
        inbox.unacked -= grant
        return grant

    def _grant(self, session: int, size: int) -> None:
        # A send that fails breaks the link: the session's next receive says so.
        with contextlib.suppress(BackendError, TimeoutError):
            self.send(Type.OUTPUT_ACK, session, size.to_bytes(4, "big"))

    def take_credit(self, session: int, want: int, timeout: float) -> int:
        """Wait until the guest accepts stdin again; how many of ``want`` bytes it may get."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                inbox = self._inboxes.get(session)
                if inbox is None:
                    raise BackendError("the agent session is closed")
                self._check()
                if inbox.credit > 0:
                    grant = min(want, inbox.credit)
                    inbox.credit -= grant
                    return grant
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the command in the guest does not read its input")
                self._cond.wait(left)

    def release(self, session: int) -> None:
        """Forget a session; frames that still come for it are dropped."""
        with self._cond:
            self._inboxes.pop(session, None)
            self._cond.notify_all()

    def send(self, type: Type, session: int, body: bytes = b"") -> None:
        frame = protocol.encode(type, session, body)
        with self._send_lock:
            self._check()
            try:
                _send_all(self._sock, frame)
            except (BrokenPipeError, ConnectionResetError) as e:  # as the reader would say
                self._fail(BackendError("the guest agent closed the connection"))
                raise self.broken from e  # type: ignore[misc]
            except (OSError, TimeoutError) as e:  # a half-sent frame: the stream is lost
                self._fail(BackendError(f"writing to the guest agent failed: {e}"))
                raise self.broken from e  # type: ignore[misc]

    def close(self) -> None:
        self._fail(BackendError("the connection to the guest agent was closed"))

    # -- the reader thread --

    def _check(self) -> None:
        if self.broken is not None:
            raise self.broken

    def _read(self) -> None:
        try:
            while self.broken is None:
                data = self._sock.recv(protocol.CHUNK + protocol.HEADER.size)
                if not data:
                    raise BackendError("the guest agent closed the connection")
                self.last_heard = time.monotonic()
                for frame in self._decoder.feed(data):
                    self._deliver(frame)
        except BackendError as e:
            self._fail(e)
        except ConnectionResetError:  # it hung up with the host's bytes unread
            self._fail(BackendError("the guest agent closed the connection"))
        except OSError as e:
            self._fail(BackendError(f"the connection to the guest agent broke: {e}"))

    def _deliver(self, frame: Frame) -> None:
        """Queue a frame for its session; never waits (BackendError: the guest broke the
        protocol, and with it the link)."""
        with self._cond:
            inbox = self._inboxes.get(frame.session)
            if inbox is None or self.broken is not None:
                return  # a session already closed (or never opened): dropped
            if frame.type is Type.STDIN_ACK:
                inbox.credit += int.from_bytes(frame.body, "big")
                if inbox.credit > protocol.STDIN_WINDOW:
                    raise BackendError("the guest agent acknowledged stdin it was never sent")
            elif frame.type in protocol.DATA:
                if not frame.body:  # costs the host a frame and the guest nothing
                    raise BackendError("the guest agent sent an empty data frame")
                inbox.unacked += len(frame.body)
                if inbox.unacked > protocol.OUTPUT_WINDOW:
                    raise BackendError("the guest agent sent output beyond its window")
                inbox.frames.append(frame)
            else:
                inbox.control += len(frame.body) + protocol.HEADER.size
                if inbox.control > CONTROL_BYTES:
                    raise BackendError("the guest agent flooded a session with frames")
                inbox.frames.append(frame)
            self._cond.notify_all()

    def _fail(self, error: BackendError) -> None:
        with self._cond:
            if self.broken is None:
                self.broken = error
            self._cond.notify_all()
        forget(self)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data``; TimeoutError after :data:`SEND_TIMEOUT` without progress."""
    view = memoryview(data)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    deadline = time.monotonic() + SEND_TIMEOUT
    while view:
        try:
            sent = sock.send(view, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent:
            view = view[sent:]
            deadline = time.monotonic() + SEND_TIMEOUT
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the guest agent stopped reading")
        poller.poll(left * 1000)


# -- connecting --

_links: dict[str, Link] = {}
_connecting: dict[str, threading.Lock] = {}
_registry = threading.Lock()


def key_of(channel: AgentChannel) -> str:
    return f"{channel.socket}#{channel.vsock_port or ''}"


def link_for(channel: AgentChannel, timeout: float) -> Link:
    """The process's link to ``channel``, connected and greeted within ``timeout``."""
    key = key_of(channel)
    with _registry:
        gate = _connecting.setdefault(key, threading.Lock())
    if not gate.acquire(timeout=max(timeout, 0)):
        raise TimeoutError("another caller is still connecting to the guest agent")
    try:
        with _registry:
            link = _links.get(key)
        if link is not None and link.broken is None:
            return link
        link = _connect(channel, key, timeout)
        with _registry:
            _links[key] = link
        return link
    finally:
        gate.release()


def forget(link: Link) -> None:
    with _registry:
        if _links.get(link.key) is link:
            del _links[link.key]


def _connect(channel: AgentChannel, key: str, timeout: float) -> Link:
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(timeout, 0.001))
        try:
            sock.connect(str(channel.socket))
        except OSError as e:
            raise BackendError(f"cannot reach the guest agent at {channel.socket}: {e}") from e
        pending = b""
        if channel.vsock_port is not None:
            sock.sendall(f"CONNECT {channel.vsock_port}\n".encode())
            pending = _read_line(sock, deadline)
        leftover = _handshake(sock, pending, deadline)
        sock.settimeout(None)  # the reader blocks; sends poll with their own timeout
    except BaseException:
        sock.close()
        raise
    return Link(sock, leftover, key)


def _recv(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the guest agent did not answer in time")
    sock.settimeout(left)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        raise TimeoutError("the guest agent did not answer in time") from None
    if not data:
        raise BackendError("the guest agent closed the connection while connecting")
    return data


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """The hybrid vsock's ``OK <port>\\n``; bytes after it, if any, are returned."""
    buffer = b""
    while b"\n" not in buffer:
        if len(buffer) > 256:
            raise BackendError("the vsock socket answered CONNECT with no line")
        buffer += _recv(sock, deadline)
    line, _, rest = buffer.partition(b"\n")
    if not line.startswith(b"OK "):
        raise BackendError(f"the vsock socket refused the connection: {line[:80]!r}")
    return rest


def _handshake(sock: socket.socket, pending: bytes, deadline: float) -> bytes:
    """Send a hello, skip stale bytes until its answer; what followed the answer."""
    nonce = os.urandom(protocol.NONCE_SIZE)
    sock.sendall(protocol.hello(nonce))
    head = protocol.HEADER.pack(24, Type.READY, 0) + protocol.MAGIC
    buffer, skipped = bytearray(pending), 0
    while True:
        at = buffer.find(nonce)
        if at >= len(head) + 4 and buffer[at - len(head) - 4 : at - 4] == head:
            version = int.from_bytes(buffer[at - 4 : at], "big")
            if version != protocol.VERSION:
                raise BackendError(
                    f"the guest agent speaks version {version}, not {protocol.VERSION}: "
                    "its image needs the agent of this meda"
                )
            return bytes(buffer[at + protocol.NONCE_SIZE :])
        keep = len(head) + 4 + protocol.NONCE_SIZE
        if len(buffer) > keep:  # what cannot be the start of the answer is skipped
            skipped += len(buffer) - keep
            del buffer[: len(buffer) - keep]
        if skipped > protocol.MAX_STALE:
            raise BackendError("the guest agent sent no answer to its hello, only noise")
        buffer += _recv(sock, deadline)
