"""Commands under way in guests: each one's events pumped into a bounded queue by a thread
(a full queue stops the pump: the agent's own backpressure reaches the guest), its deadline
kept by a timer, and the server's count of them capped."""

from __future__ import annotations

import base64
import itertools
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from meda_core.backends.roles import AgentSession, ExecExit, ExecOutput
from meda_core.errors import CommandTimedOut, MedaError, NotFound, RateLimited

Event = dict[str, Any]
RETRY_AFTER_SECONDS = 5
#: Output bytes (base64) one command's queue holds before its pump waits for a reader.
QUEUE_BYTES = 4 * 1024 * 1024
audit = logging.getLogger("meda.audit")


class Running:
    """One command: :meth:`next` gives its events as the API streams them (``started``,
    ``stdout``/``stderr`` with base64 ``data``, then ``exit`` or ``error``)."""

    def __init__(
        self,
        session_id: str,
        vm: str,
        owner: str,
        session: AgentSession,
        timeout: float | None,
        forget: Callable[[Running], None],
    ) -> None:
        self.id, self.vm, self.owner, self.session = session_id, vm, owner, session
        self.timed_out = False
        self.exit: ExecExit | None = None
        self._forget = forget
        self._queue: deque[Event | None] = deque()
        self._queued = 0  # output bytes in the queue
        self._changed = threading.Condition()
        self._ended = threading.Event()
        self._closed = False
        self._put({"event": "started", "data": {"session": session_id}})
        self._timer = threading.Timer(timeout, self._expire) if timeout else None
        threading.Thread(target=self._pump, name=f"exec-{session_id}", daemon=True).start()
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self.timed_out = True
        self.session.kill()

    def _put(self, event: Event | None, size: int = 0) -> None:
        """Queue ``event`` (``size`` output bytes); waits while the queue is full, unless
        the command is closed: then output is dropped (nobody will read it)."""
        with self._changed:
            self._changed.wait_for(lambda: self._queued < QUEUE_BYTES or self._closed)
            if self._closed and size:
                return
            self._queue.append(event)
            self._queued += size
            self._changed.notify_all()

    def _pump(self) -> None:
        try:
            for event in self.session.events():
                if isinstance(event, ExecOutput):
                    data = base64.b64encode(event.data).decode()
                    self._put({"event": event.stream.value, "data": {"data": data}}, len(data))
                else:
                    self.exit = event
            self._put(self._last())
        except MedaError as error:
            self._put({"event": "error", "data": error.to_body()})
        except Exception as error:  # an agent's bug ends the stream, not the server
            body = MedaError(f"the guest agent failed: {error}").to_body()
            self._put({"event": "error", "data": body})
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._audit_end()
            self._put(None)

    def _audit_end(self) -> None:
        code, signal = (self.exit.code, self.exit.signal) if self.exit else (None, None)
        audit.info(
            "exec-end vm=%s by=%s session=%s exit=%s signal=%s timed_out=%s",
            self.vm,
            self.owner,
            self.id,
            code,
            signal,
            self.timed_out,
        )

    def _last(self) -> Event:
        if self.timed_out:
            error = CommandTimedOut(f"the command in VM '{self.vm}' outlived its timeout")
            return {"event": "error", "data": error.to_body()}
        assert self.exit is not None
        return {"event": "exit", "data": {"exit_code": self.exit.code, "signal": self.exit.signal}}

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None when none came in ``timeout`` (0: never blocks) or at the end."""
        if self._ended.is_set():
            return None
        with self._changed:
            if not self._changed.wait_for(lambda: self._queue, timeout):
                return None
            event = self._queue.popleft()
            if event is not None and event["event"] in ("stdout", "stderr"):
                self._queued -= len(event["data"]["data"])
            self._changed.notify_all()
        if event is None:
            self._ended.set()
        return event

    @property
    def queued(self) -> int:
        """Output bytes (base64) waiting for a reader."""
        with self._changed:
            return self._queued

    @property
    def ended(self) -> bool:
        """True once the last event was taken."""
        return self._ended.is_set()

    def wait(self) -> None:
        """Block until the command's events are all pumped (it ended, or was killed)."""
        while self.next(timeout=None) is not None:
            pass

    def close(self) -> None:
        """Kill the command if it still runs and forget it (idempotent)."""
        if self._closed:
            return
        with self._changed:
            self._closed = True
            self._changed.notify_all()  # a pump waiting for room drops output from now on
        if self._timer is not None:
            self._timer.cancel()
        try:
            self.session.close()
        finally:
            self._forget(self)


class ExecSessions:
    """The commands under way on this server, by id; at most ``limit`` at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._running: dict[str, Running] = {}
        self._starting = 0
        self._counter = itertools.count(1)

    def start(
        self, vm: str, owner: str, begin: Callable[[], AgentSession], timeout: float | None
    ) -> Running:
        """Run ``begin`` (which starts the command) in a free place; 429 when none is."""
        session_id = f"{next(self._counter)}-{secrets.token_hex(8)}"
        with self._lock:
            if len(self._running) + self._starting >= self.limit:
                raise RateLimited(
                    f"at most {self.limit} commands at once (MEDA_EXEC_SESSIONS_MAX); "
                    f"retry in {RETRY_AFTER_SECONDS}s",
                    retry_after=RETRY_AFTER_SECONDS,
                )
            self._starting += 1  # its place is held while the agent starts it
        try:
            running = Running(session_id, vm, owner, begin(), timeout, self._remove)
            with self._lock:
                self._running[session_id] = running
        finally:
            with self._lock:
                self._starting -= 1
        return running

    def find(self, vm: str, session_id: str, owner: str) -> Running:
        """The command ``session_id`` in ``vm``, if ``owner`` started it: another client's
        is as unknown as a made-up one (404)."""
        with self._lock:
            running = self._running.get(session_id)
        if running is None or running.vm != vm or running.owner != owner:
            raise NotFound(f"no command session '{session_id[:80]}' in VM '{vm}'")
        return running

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)

    def close_all(self) -> None:
        with self._lock:
            running = list(self._running.values())
        for each in running:
            each.close()

    def _remove(self, running: Running) -> None:
        with self._lock:
            self._running.pop(running.id, None)
