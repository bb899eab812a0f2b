"""``GuestService``: commands and files in a running guest, through its agent."""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import shlex
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import PurePosixPath

from meda_core.backends.roles import (
    AgentBackend,
    AgentChannel,
    Capability,
    ExecCommand,
    HypervisorBackend,
    Role,
)
from meda_core.backends.selection import BackendSelector
from meda_core.errors import (
    BackendError,
    CommandTimedOut,
    InvalidRequest,
    InvalidState,
    NoAgent,
    PayloadTooLarge,
)
from meda_core.models import ExecRequest, ExecResult, FileResult, VMState, check_guest_path
from meda_core.settings import Settings
from meda_core.vms.execs import ExecSessions, Running
from meda_core.vms.service import VMService

#: Who makes the current call: the API sets it per request (token digest or address).
caller: ContextVar[str] = ContextVar("meda_caller", default="local")
log = logging.getLogger(__name__)
#: One line per exec and file transfer: who, which VM, what — never output or file bytes.
audit = logging.getLogger("meda.audit")
SHOWN_ARGV = 1000
#: Seconds a killed command's events get to end before the caller stops waiting for them.
KILL_GRACE = 10.0


def _argv_text(argv: Iterable[str]) -> str:
    text = shlex.join(argv)
    return text if len(text) <= SHOWN_ARGV else text[:SHOWN_ARGV] + "…"


def parse_mode(mode: str) -> int:
    """``0644`` (octal) as a number; InvalidRequest for anything else."""
    try:
        value = int(mode, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o7777:
        raise InvalidRequest(f"mode must be octal, 0 to 7777: {mode[:20]!r}", mode=mode[:20])
    return value


def parse_owner(owner: str | None) -> tuple[int, int] | None:
    """``uid:gid`` as numbers; InvalidRequest for anything else."""
    if owner is None:
        return None
    uid, _, gid = owner.partition(":")
    if not (uid.isdigit() and gid.isdigit()) or max(int(uid), int(gid)) >= 2**32 - 1:
        raise InvalidRequest(f"owner must be uid:gid (numbers): {owner[:40]!r}", owner=owner[:40])
    return int(uid), int(gid)


def guest_path(path: str) -> str:
    try:
        return check_guest_path(path)
    except ValueError as error:
        raise InvalidRequest(str(error), path=path[:200]) from None


#: Seconds the first ping of a new clone's agent waits; each next one, on a new
#: connection, waits twice as long as the one before.
CLONE_PING = 1.0


def _answers_within(agent: AgentBackend, channel: AgentChannel, wait: float) -> bool:
    """Ping until the agent answers or ``wait`` seconds are over. An unanswered ping drops
    its connection: a guest restored from memory may still hold its template's link and
    answer only once the host connects anew."""
    deadline, each = time.monotonic() + wait, CLONE_PING
    while (left := deadline - time.monotonic()) > 0:
        if agent.ping(channel, min(each, left)):
            return True
        each *= 2
    return False


class GuestService:
    """Exec and files in running guests; the agent is pinged (MEDA_AGENT_TIMEOUT) first."""

    def __init__(self, settings: Settings, vms: VMService, backends: BackendSelector) -> None:
        self._settings, self._vms, self._backends = settings, vms, backends
        self.sessions = ExecSessions(settings.exec_sessions_max)

    def channel(self, name: str) -> tuple[AgentBackend, AgentChannel]:
        """The agent and channel of the running VM ``name``, whether the agent answers yet
        or not; NoAgent if it can have none."""
        agent, channel = self._channel(name)
        if agent is None:
            raise NoAgent(name, "no agent backend is installed on this host")
        if channel is None:
            hypervisor = self._vms.get(name).hypervisor
            raise NoAgent(name, f"the {hypervisor} hypervisor gives guests no agent channel")
        return agent, channel

    def reach(self, name: str) -> tuple[AgentBackend, AgentChannel]:
        """The agent and channel of the running VM ``name``, once the agent answers."""
        agent, channel = self.channel(name)
        timeout = self._settings.agent_timeout
        if not agent.ping(channel, timeout):
            raise NoAgent(
                name,
                f"no answer in {timeout:g}s, MEDA_AGENT_TIMEOUT; a guest still booting answers "
                "once its agent has started, and one process at a time holds a guest's agent: "
                "while `meda serve` runs, send commands through it (--url, MEDA_URL)",
            )
        return agent, channel

    def _channel(self, name: str) -> tuple[AgentBackend | None, AgentChannel | None]:
        """The agent backend and the channel of the running VM ``name`` (None: none)."""
        vm = self._vms.get(name)
        if vm.state != VMState.RUNNING or vm.runtime is None:
            raise InvalidState(f"VM '{name}' is {vm.state.value}, not running", state=vm.state)
        hypervisor = self._backends.by_name(Role.HYPERVISOR, vm.hypervisor, HypervisorBackend)
        return self._backends.agent(), hypervisor.agent_channel(vm.runtime, vm.vm_dir)

    def answers(self, name: str, timeout: float) -> bool:
        """True once the agent of the running VM ``name`` answers a ping in ``timeout``
        seconds; False if it does not or the VM cannot have one (a readiness signal)."""
        agent, channel = self._channel(name)
        return agent is not None and channel is not None and agent.ping(channel, timeout)

    def refresh_identity(self, name: str) -> bool:
        """Give the running VM ``name`` an identity of its own through its agent: its
        name as hostname, a new machine-id and SSH host keys. False, with a log line why,
        when it cannot; it never raises: the guest keeps what its seed gave it."""
        wait, started = self._settings.clone_agent_wait, time.monotonic()
        try:
            agent, channel = self._channel(name)
            if agent is None or Capability.IDENTITY not in agent.capabilities:
                why = "no agent backend here sets identities"
            elif channel is None:
                why = "its hypervisor gives it no agent channel"
            elif wait == 0 or not _answers_within(agent, channel, wait):
                why = f"no agent answered in {wait:g}s (MEDA_CLONE_AGENT_WAIT)"
            else:
                answered = time.monotonic() - started
                agent.set_identity(channel, name)
                log.info(
                    "identity of VM %s set through its agent (answered in %.1fs, set in %.1fs)",
                    name,
                    answered,
                    time.monotonic() - started - answered,
                )
                return True
        except Exception as error:  # a clone without its own identity still works
            why = str(error)
        log.warning("identity of VM %s not refreshed (its seed's hostname only): %s", name, why)
        return False

    def start(self, name: str, request: ExecRequest, timeout: float | None) -> Running:
        """Start ``request``'s command; its ``stdin``, if given, is sent and closed."""
        agent, channel = self.reach(name)
        command = ExecCommand(tuple(request.command), tuple(request.env.items()), request.cwd)
        running = self.sessions.start(
            name, caller.get(), lambda: agent.exec(channel, command), timeout
        )
        audit.info(
            "exec vm=%s by=%s session=%s argv=%s",
            name,
            caller.get(),
            running.id,
            _argv_text(request.command),
        )
        if request.stdin is not None:
            self._feed(running, request.stdin.encode())
        return running

    def _feed(self, running: Running, data: bytes) -> None:
        try:
            if data:
                running.session.send_stdin(data)
            running.session.close_stdin()
        except BackendError:
            pass  # a command that exits without reading its input is not an error

    def exec(self, name: str, request: ExecRequest) -> ExecResult:
        """Run a command to its end; output past MEDA_EXEC_OUTPUT_MAX per stream is cut."""
        timeout = request.timeout or self._settings.exec_timeout
        if request.stdin is None:
            request = request.model_copy(update={"stdin": ""})
        running = self.start(name, request, timeout)
        try:
            result = self._collect(running, time.monotonic() + timeout + KILL_GRACE)
        finally:
            running.close()
        if running.timed_out:
            raise CommandTimedOut(
                f"the command in VM '{name}' ran past its {timeout:g}s timeout and was killed",
                **result.model_dump(include={"stdout", "stderr", "truncated"}),
                timeout=timeout,
            )
        return result

    def _collect(self, running: Running, give_up: float | None = None) -> ExecResult:
        """The command's output and exit; past ``give_up`` (a guest that does not end a
        killed command) what came so far."""
        limit = self._settings.exec_output_max
        out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        truncated, end = False, None
        while not running.ended:
            wait = None if give_up is None else max(0.05, give_up - time.monotonic())
            event = running.next(timeout=wait)
            if event is None:
                if give_up is not None and time.monotonic() >= give_up:
                    running.timed_out = True
                    break
                continue
            kind, data = event["event"], event["data"]
            if kind in out:
                chunk = base64.b64decode(data["data"])
                room = max(0, limit - len(out[kind]))
                truncated |= len(chunk) > room
                out[kind] += chunk[:room]
            elif kind in ("exit", "error"):
                end = event
        if end is not None and end["event"] == "error" and not running.timed_out:
            raise BackendError(end["data"]["error"], **end["data"].get("details", {}))
        exit = running.exit
        return ExecResult(
            exit_code=exit.code if exit else None,
            signal=exit.signal if exit else None,
            stdout=out["stdout"].decode(errors="replace"),
            stderr=out["stderr"].decode(errors="replace"),
            truncated=truncated,
        )

    def stdin(self, name: str, session_id: str, chunks: Iterable[bytes], eof: bool) -> int:
        """Give the command ``session_id`` (started by this caller) more input."""
        running = self.sessions.find(name, session_id, caller.get())
        size = 0
        for data in self._capped(chunks):
            size += len(data)
            running.session.send_stdin(data)
        if eof:
            running.session.close_stdin()
        return size

    def _capped(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` until MEDA_FILE_MAX_BYTES; PayloadTooLarge beyond (raised into the
        agent's write, which then leaves nothing)."""
        limit, size = self._settings.file_max_bytes, 0
        for data in chunks:
            size += len(data)
            if size > limit:
                raise PayloadTooLarge(f"body over {limit} bytes (MEDA_FILE_MAX_BYTES)", limit=limit)
            yield data

    # ---- files ----

    def read_file(self, name: str, path: str, archive: bool = False) -> Iterator[bytes]:
        """The guest file ``path``'s bytes (or, with ``archive``, the directory as a tar),
        streamed; errors (no file, no agent) come before the first byte."""
        path = guest_path(path)
        agent, channel = self.reach(name)
        chunks = self._tar_out(name, path) if archive else agent.read_file(channel, path)
        first = next(chunks, b"")  # an error the agent finds at once comes now, not mid-stream
        audit.info("file-read vm=%s by=%s path=%s archive=%s", name, caller.get(), path, archive)
        return self._counted(first, chunks, name, path)

    def _counted(
        self, first: bytes, rest: Iterator[bytes], name: str, path: str
    ) -> Iterator[bytes]:
        """``first``, then ``rest``, until MEDA_FILE_MAX_BYTES: a guest's file (or tar)
        that never ends is cut there with PayloadTooLarge (the response ends short)."""
        limit, size = self._settings.file_max_bytes, 0
        try:
            for data in itertools.chain([first] if first else [], rest):
                size += len(data)
                if size > limit:
                    raise PayloadTooLarge(
                        f"{path} in VM '{name}' is over {limit} bytes (MEDA_FILE_MAX_BYTES)",
                        limit=limit,
                    )
                yield data
        finally:
            close = getattr(rest, "close", None)
            if close is not None:
                close()  # stops the agent's transfer (or the tar) when cut or abandoned
        audit.info("file-read-end vm=%s path=%s size=%d", name, path, size)

    def _tar_out(self, name: str, path: str) -> Iterator[bytes]:
        """``tar -c .`` run in ``path``: the directory as a tar, as tar writes it."""
        request = ExecRequest(command=["tar", "-c", "."], cwd=path, stdin="")
        timeout = self._settings.exec_timeout
        running = self.start(name, request, timeout)
        return self._tar_stdout(running, path, time.monotonic() + timeout + KILL_GRACE)

    def _tar_stdout(self, running: Running, path: str, give_up: float) -> Iterator[bytes]:
        """tar's output; CommandTimedOut once it ran past MEDA_EXEC_TIMEOUT (killed), or
        past that and KILL_GRACE (a guest that does not end it)."""
        errors = bytearray()
        try:
            while (event := running.next(max(0.0, give_up - time.monotonic()))) is not None:
                if event["event"] == "stdout":
                    yield base64.b64decode(event["data"]["data"])
                elif event["event"] == "stderr":
                    errors += base64.b64decode(event["data"]["data"])[:4096]
                elif event["event"] == "error" or (
                    event["event"] == "exit" and event["data"]["exit_code"] != 0
                ):
                    if running.timed_out:
                        break
                    raise BackendError(
                        f"tar of {path} failed in the guest: {errors.decode(errors='replace')}",
                        path=path,
                    )
            if running.timed_out or not running.ended:
                raise CommandTimedOut(
                    f"tar of {path} ran past MEDA_EXEC_TIMEOUT and was stopped", path=path
                )
        finally:
            running.close()

    def write_file(
        self,
        name: str,
        path: str,
        chunks: Iterable[bytes],
        mode: str = "0644",
        owner: str | None = None,
        archive: bool = False,
    ) -> FileResult:
        """Write the guest file ``path`` from ``chunks`` (capped at MEDA_FILE_MAX_BYTES),
        or with ``archive`` unpack them (a tar) into the directory ``path``."""
        path, bits, ids = guest_path(path), parse_mode(mode), parse_owner(owner)
        agent, channel = self.reach(name)
        digest, size = hashlib.sha256(), 0

        def measured() -> Iterator[bytes]:
            nonlocal size
            for data in self._capped(chunks):
                digest.update(data)
                size += len(data)
                yield data

        if archive:
            self._tar_in(name, path, measured())
        else:
            agent.write_file(channel, path, measured(), bits, ids)
        audit.info(
            "file-write vm=%s by=%s path=%s size=%d archive=%s",
            name,
            caller.get(),
            path,
            size,
            archive,
        )
        return FileResult(path=path, size=size, sha256=digest.hexdigest())

    def _tar_in(self, name: str, path: str, chunks: Iterator[bytes]) -> None:
        """``mkdir -p`` the directory, then ``tar -x`` in it with ``chunks`` as its input.
        Paths travel as the working directory, never in argv: a fake agent maps it."""
        relative = str(PurePosixPath(path).relative_to("/")) or "."
        made = self.exec(name, ExecRequest(command=["mkdir", "-p", relative], cwd="/"))
        if made.exit_code != 0:
            raise InvalidRequest(f"cannot make {path} in the guest: {made.stderr[:500]}")
        timeout = self._settings.exec_timeout
        running = self.start(name, ExecRequest(command=["tar", "-x"], cwd=path), timeout)
        try:
            for data in chunks:
                running.session.send_stdin(data)
            running.session.close_stdin()
            result = self._collect(running, time.monotonic() + timeout + KILL_GRACE)
        finally:
            running.close()
        if running.timed_out:
            raise CommandTimedOut(
                f"tar into {path} ran past MEDA_EXEC_TIMEOUT and was stopped", path=path
            )
        if result.exit_code != 0:
            raise InvalidRequest(f"tar refused the archive: {result.stderr[:500]}", path=path)

    def close(self) -> None:
        """Kill every command still under way (the server is going)."""
        self.sessions.close_all()
