"""The fake guest agent: commands run as host processes in a scratch folder beside the
channel, so that streaming, stdin, exit codes, kills and timeouts are real.

It is a test tool and the agent conformance suite's reference, never a sandbox: a command
it runs can reach the host. Its file operations, though, resolve every guest path under
the scratch root and refuse any that would leave it (``..``, symbolic links).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

from meda_core.backends.roles import (
    AgentBackend,
    AgentChannel,
    AgentSession,
    Availability,
    Capability,
    ExecCommand,
    ExecExit,
    ExecOutput,
    ExecStream,
)
from meda_core.errors import BackendError, InvalidRequest, NotFound

CHUNK = 64 * 1024
#: The scratch root's folder name, beside the channel's socket.
SCRATCH = "fake-agent-root"
Event = ExecOutput | ExecExit


def scratch_root(channel: AgentChannel) -> Path:
    """The folder the fake agent's guest paths resolve under (made on first use)."""
    root = channel.socket.parent / SCRATCH
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def guest_path(root: Path, path: str) -> Path:
    """``path`` (absolute, as in a guest) under ``root``; InvalidRequest if it leaves it."""
    if not path.startswith("/") or "\0" in path:
        raise InvalidRequest(f"a guest path must be absolute, without NUL: {path!r}")
    base = root.resolve()
    found = (base / path.lstrip("/")).resolve()
    if found != base and base not in found.parents:
        raise InvalidRequest(f"{path!r} leads out of the fake agent's scratch root")
    return found


class FakeSession(AgentSession):
    """A host process, read by two threads into one queue; its exit comes last."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._events: queue.Queue[Event] = queue.Queue()
        readers = [
            threading.Thread(target=self._read, args=(pipe, stream), daemon=True)
            for pipe, stream in (
                (process.stdout, ExecStream.STDOUT),
                (process.stderr, ExecStream.STDERR),
            )
        ]
        for reader in readers:
            reader.start()
        threading.Thread(target=self._wait, args=(readers,), daemon=True).start()

    def _read(self, pipe: object, stream: ExecStream) -> None:
        fd = pipe.fileno()  # type: ignore[attr-defined]
        while data := os.read(fd, CHUNK):
            self._events.put(ExecOutput(stream, data))

    def _wait(self, readers: list[threading.Thread]) -> None:
        for reader in readers:
            reader.join()
        code = self._process.wait()
        self._events.put(ExecExit(None, -code) if code < 0 else ExecExit(code))

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no output for {timeout}s") from None
            yield event
            if isinstance(event, ExecExit):
                return

    def send_stdin(self, data: bytes) -> None:
        stdin = self._process.stdin
        if stdin is None or stdin.closed:
            raise BackendError("the command's input is closed")
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, ValueError):
            raise BackendError("the command no longer reads its input") from None

    def close_stdin(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()

    def kill(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        self.close_stdin()


class _Finished(AgentSession):
    """A command that could not start: what a shell says, then its status (127, 126)."""

    def __init__(self, message: bytes, code: int) -> None:
        self._events: list[Event] = [ExecOutput(ExecStream.STDERR, message), ExecExit(code)]

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        while self._events:
            yield self._events.pop(0)

    def send_stdin(self, data: bytes) -> None:
        raise BackendError("the command has ended")

    def close_stdin(self) -> None:
        pass

    def kill(self) -> None:
        pass

    def close(self) -> None:
        self._events.clear()


class FakeAgent(AgentBackend):
    """Answers while the channel's socket file exists (the fake hypervisor makes it)."""

    name = "fake"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.EXEC_STREAM, Capability.STDIN, Capability.FILES, Capability.IDENTITY}
    )
    priority = 100

    def check_available(self) -> Availability:
        return Availability.yes()

    def ping(self, channel: AgentChannel, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not channel.socket.exists():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def exec(self, channel: AgentChannel, command: ExecCommand) -> AgentSession:
        if not command.argv:
            raise InvalidRequest("a command needs a program")
        root = scratch_root(channel)
        cwd = guest_path(root, command.cwd or "/")
        if not cwd.is_dir():
            raise NotFound(f"no directory {command.cwd} in the guest")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"}
        try:
            process = subprocess.Popen(
                list(command.argv),
                cwd=cwd,
                env=env | dict(command.env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            return _Finished(f"{command.argv[0]}: not found\n".encode(), 127)
        except PermissionError:
            return _Finished(f"{command.argv[0]}: permission denied\n".encode(), 126)
        return FakeSession(process)

    def read_file(self, channel: AgentChannel, path: str) -> Iterator[bytes]:
        found = guest_path(scratch_root(channel), path)
        if not found.exists():
            raise NotFound(f"no file {path} in the guest")
        if not found.is_file():
            number = errno.EISDIR if found.is_dir() else errno.EINVAL  # as meda's agent says
            raise InvalidRequest(f"{path} is not a regular file", path=path, errno=number)
        return self._chunks(found)

    @staticmethod
    def _chunks(found: Path) -> Iterator[bytes]:
        with found.open("rb") as file:
            while data := file.read(CHUNK):
                yield data

    def write_file(
        self,
        channel: AgentChannel,
        path: str,
        chunks: Iterable[bytes],
        mode: int = 0o644,
        owner: tuple[int, int] | None = None,
    ) -> int:
        found = guest_path(scratch_root(channel), path)
        if not found.parent.is_dir():
            raise NotFound(f"no directory {Path(path).parent} in the guest")
        partial = found.with_name(f".{found.name}.meda-partial")
        written = 0
        try:
            with partial.open("wb") as file:
                for data in chunks:
                    written += file.write(data)
            os.chmod(partial, mode)
            if owner is not None:
                os.chown(partial, *owner)
            os.replace(partial, found)
        finally:
            partial.unlink(missing_ok=True)
        return written

    def set_identity(self, channel: AgentChannel, hostname: str) -> None:
        """The hostname in the scratch root's ``/etc/hostname``, and a new ``/etc/machine-id``
        where there is one (the host's own names are never touched)."""
        if not hostname or len(hostname) > 64 or "\0" in hostname:
            raise InvalidRequest(f"'{hostname}' cannot be a hostname")
        etc = scratch_root(channel) / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "hostname").write_text(f"{hostname}\n")
        if (etc / "machine-id").exists():
            (etc / "machine-id").write_text(f"{secrets.token_hex(16)}\n")
