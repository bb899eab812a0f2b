"""The ``meda`` agent backend: exec, files and identity through meda's own guest program."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

from meda_agent import protocol
from meda_agent.build import agent_binary
from meda_agent.link import Link, link_for
from meda_agent.protocol import Frame, Type
from meda_core.plugin import (
    AgentBackend,
    AgentChannel,
    AgentSession,
    Availability,
    BackendError,
    Capability,
    ExecCommand,
    ExecExit,
    ExecOutput,
    ExecStream,
    InvalidRequest,
    MedaError,
    NotFound,
)

_STREAMS = {Type.STDOUT: ExecStream.STDOUT, Type.STDERR: ExecStream.STDERR}
_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR}
_INVALID = {errno.EISDIR, errno.EINVAL, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def guest_error(frame: Frame, path: str | None = None) -> MedaError:
    """The error a guest's ERROR frame stands for (by errno where it names the request)."""
    number, message = protocol.decode_error(frame.body)
    if path is not None and number in _NOT_FOUND:
        return NotFound(f"no file '{path}' in the guest", path=path)
    if path is not None and number in _INVALID:
        return InvalidRequest(f"guest file '{path}': {message}", path=path, errno=number)
    if message.startswith("cwd:") and number in _NOT_FOUND | _INVALID:
        return InvalidRequest(f"no such directory to run in, in the guest ({message})")
    return BackendError(f"the guest agent refused: {message}", errno=number)


def check_path(path: str) -> None:
    if not path.startswith("/") or "\0" in path or len(path.encode()) >= 4096:
        raise InvalidRequest(f"a guest path must be absolute, without NUL: {path[:200]!r}")


def abandon(link: Link, session: int) -> None:
    """Tell the guest to drop a session, if the link still stands."""
    try:
        if link.broken is None:
            link.send(Type.KILL, session)
    except (BackendError, TimeoutError):
        pass  # the guest drops every session of a broken link itself


class MedaSession(AgentSession):
    """One command running under the meda agent."""

    def __init__(self, link: Link, session: int, send_timeout: float) -> None:
        self._link = link
        self._id = session
        self._send_timeout = send_timeout
        self._ended = False

    def events(self, timeout: float | None = None) -> Iterator[ExecOutput | ExecExit]:
        while not self._ended:
            frame = self._link.receive(self._id, timeout)
            if frame.type in _STREAMS:
                yield ExecOutput(_STREAMS[frame.type], frame.body)
            elif frame.type is Type.EXIT:
                self._ended = True
                code, signal = protocol.decode_exit(frame.body)
                yield ExecExit(code=code, signal=signal)
            elif frame.type is Type.ERROR:
                self._ended = True
                raise guest_error(frame)
            else:
                raise BackendError(f"the guest agent sent {frame.type.name} to a command")

    def send_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            size = min(len(view), protocol.CHUNK)
            grant = self._link.take_credit(self._id, size, self._send_timeout)
            self._link.send(Type.STDIN, self._id, bytes(view[:grant]))
            view = view[grant:]

    def close_stdin(self) -> None:
        self._link.send(Type.STDIN_EOF, self._id)

    def kill(self) -> None:
        self._link.send(Type.KILL, self._id)

    def close(self) -> None:
        if not self._ended:
            abandon(self._link, self._id)
        self._link.release(self._id)


class MedaAgent(AgentBackend):
    name = "meda"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.EXEC_STREAM, Capability.STDIN, Capability.FILES, Capability.IDENTITY}
    )
    priority = 10
    #: Seconds to connect and greet, and to wait for each reply that is not output.
    connect_timeout: ClassVar[float] = 10.0
    reply_timeout: ClassVar[float] = 30.0
    #: Setting an identity runs ssh-keygen, slow in an emulated guest.
    identity_timeout: ClassVar[float] = 180.0

    def check_available(self) -> Availability:
        return Availability.yes()  # the host side needs nothing; guest_program may fail

    def guest_program(self) -> Path:
        return agent_binary(self.context.cache_dir)

    def ping(self, channel: AgentChannel, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            link = link_for(channel, timeout)
        except (BackendError, TimeoutError, OSError):
            return False
        try:
            asked = time.monotonic()
            session = link.open(Type.PING, b"ping")
            try:
                frame = link.receive(session, max(deadline - time.monotonic(), 0))
            finally:
                link.release(session)
        except TimeoutError:
            # An agent restarted inside the guest waits for a hello on a stream the host
            # still holds open: only a new connection greets it. One that answers other
            # sessions meanwhile is only slow: their commands go on.
            if link.last_heard < asked:
                link.close()
            return False
        except (BackendError, OSError):
            return False
        return frame.type is Type.PONG

    def exec(self, channel: AgentChannel, command: ExecCommand) -> AgentSession:
        body = protocol.exec_body(command.argv, command.env, command.cwd)
        link, session = self._start(channel, Type.EXEC, body)
        return MedaSession(link, session, self.reply_timeout)

    def read_file(self, channel: AgentChannel, path: str) -> Iterator[bytes]:
        check_path(path)
        link, session = self._open(channel, Type.READ, path.encode())
        try:
            first = self._file_frame(link, session, path)
        except BaseException:
            link.release(session)
            raise
        return self._rest_of_file(link, session, path, first)

    def write_file(
        self,
        channel: AgentChannel,
        path: str,
        chunks: Iterable[bytes],
        mode: int = 0o644,
        owner: tuple[int, int] | None = None,
    ) -> int:
        check_path(path)
        link, session = self._open(channel, Type.WRITE, protocol.write_body(path, mode, owner))
        try:
            for chunk in chunks:
                for at in range(0, len(chunk), protocol.CHUNK):
                    link.send(Type.WRITE_DATA, session, chunk[at : at + protocol.CHUNK])
            link.send(Type.WRITE_END, session)
            frame = link.receive(session, self.reply_timeout)
            if frame.type is Type.ERROR:
                raise guest_error(frame, path)
            if frame.type is not Type.WRITE_DONE:
                raise BackendError(f"the guest agent answered a write with {frame.type.name}")
            return int.from_bytes(frame.body, "big")
        except BaseException:
            abandon(link, session)  # the guest drops its temporary file
            raise
        finally:
            link.release(session)

    def set_identity(self, channel: AgentChannel, hostname: str) -> None:
        if not hostname or len(hostname) > 64 or "\0" in hostname:
            raise InvalidRequest(f"'{hostname}' cannot be a hostname")
        # Fresh entropy: a clone restored from memory shares its template's random state.
        body = hostname.encode() + b"\0" + os.urandom(64)
        link, session = self._start(channel, Type.IDENTITY, body)
        run = MedaSession(link, session, self.reply_timeout)
        said = b""
        try:
            for event in run.events(self.identity_timeout):
                if isinstance(event, ExecOutput) and event.stream is ExecStream.STDERR:
                    said = (said + event.data)[-2000:]
                elif isinstance(event, ExecExit) and event.code != 0:
                    reason = said.decode(errors="replace").strip()
                    raise BackendError(f"the guest could not take its new identity: {reason}")
        finally:
            run.close()

    # -- helpers --

    def _open(self, channel: AgentChannel, type: Type, body: bytes) -> tuple[Link, int]:
        link = link_for(channel, self.connect_timeout)
        return link, link.open(type, body)

    def _start(self, channel: AgentChannel, type: Type, body: bytes) -> tuple[Link, int]:
        """Open a command session and wait until the guest says it runs."""
        link, session = self._open(channel, type, body)
        try:
            frame = link.receive(session, self.reply_timeout)
            if frame.type is Type.ERROR:
                raise guest_error(frame)
            if frame.type is not Type.STARTED:
                raise BackendError(f"the guest agent answered a command with {frame.type.name}")
        except BaseException:
            link.release(session)
            raise
        return link, session

    def _file_frame(self, link: Link, session: int, path: str) -> Frame:
        frame = link.receive(session, self.reply_timeout)
        if frame.type is Type.ERROR:
            raise guest_error(frame, path)
        if frame.type not in (Type.FILE_DATA, Type.FILE_END):
            raise BackendError(f"the guest agent answered a read with {frame.type.name}")
        return frame

    def _rest_of_file(self, link: Link, session: int, path: str, frame: Frame) -> Iterator[bytes]:
        try:
            while frame.type is Type.FILE_DATA:
                yield frame.body
                frame = self._file_frame(link, session, path)
        finally:
            if frame.type is not Type.FILE_END:
                abandon(link, session)  # the reader stopped early
            link.release(session)
