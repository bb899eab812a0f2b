"""Long operations run in the background: progress in bytes, wait, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from meda_core.errors import Cancelled, Conflict, InsufficientCapacity, MedaError, NotFound
from meda_core.state.eventbus import EventBus

KEEP_FINISHED = 200
MAX_ACTIVE = 32  # operations pending or running at once (MEDA_MAX_OPERATIONS)
RETRY_AFTER_SECONDS = 10


class OperationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED})


class Operation(BaseModel):
    id: str
    kind: str
    state: OperationState = OperationState.PENDING
    bytes_done: int = 0
    bytes_total: int = 0
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class OperationList(BaseModel):
    operations: list[Operation]
    count: int


#: Progress of a transfer: (bytes done, bytes in all).
Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """A :data:`Progress` for callers that do not follow the bytes."""


Work = Callable[[Progress], BaseModel]


class Operations:
    """Runs work in a small thread pool; the work reports progress through its callback,
    which is also where a cancelled operation stops (at its next progress report).

    At most ``max_active`` operations are pending or running: the queue cannot grow
    without end, and a submission beyond it is refused before anything is created.
    """

    def __init__(self, events: EventBus, workers: int = 4, max_active: int = MAX_ACTIVE) -> None:
        self._events = events
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="meda-op")
        self._max_active = max_active
        self._lock = threading.Lock()
        self._ops: dict[str, Operation] = {}
        self._done: dict[str, threading.Event] = {}
        self._wakers: dict[str, list[Callable[[], None]]] = {}
        self._cancel: set[str] = set()

    def submit(self, kind: str, work: Work) -> Operation:
        op = Operation(id=uuid.uuid4().hex, kind=kind)
        with self._lock:
            self._admit()
            self._ops[op.id] = op
            self._done[op.id] = threading.Event()
            self._forget_old()
        self._publish(op)
        self._pool.submit(self._run, op.id, work)
        return op.model_copy()

    def _run(self, op_id: str, work: Work) -> None:
        self._update(op_id, state=OperationState.RUNNING)
        try:
            result = work(lambda done, total: self._progress(op_id, done, total))
        except Cancelled as error:
            self._finish(op_id, OperationState.CANCELLED, error=error.to_body())
        except MedaError as error:
            self._finish(op_id, OperationState.FAILED, error=error.to_body())
        except Exception as error:  # reported on the operation, never lost in a thread
            body = {"error": str(error), "code": "INTERNAL_ERROR", "details": {}}
            self._finish(op_id, OperationState.FAILED, error=body)
        else:
            self._finish(op_id, OperationState.SUCCEEDED, result=result.model_dump(mode="json"))

    def _progress(self, op_id: str, done: int, total: int) -> None:
        if op_id in self._cancel:
            raise Cancelled("operation cancelled", operation=op_id)
        self._update(op_id, bytes_done=done, bytes_total=total, publish=False)

    def _update(self, op_id: str, publish: bool = True, **changes: Any) -> None:
        with self._lock:
            op = self._ops[op_id]
            for key, value in changes.items():
                setattr(op, key, value)
            snapshot = op.model_copy()
        if publish:
            self._publish(snapshot)

    def _admit(self) -> None:
        """Refuse one more operation once ``max_active`` are pending or running."""
        active = sum(o.state not in FINISHED for o in self._ops.values())
        if active >= self._max_active:
            raise InsufficientCapacity(
                f"{active} operations are already queued or running (at most "
                f"{self._max_active}, MEDA_MAX_OPERATIONS); try again later",
                retry_after=RETRY_AFTER_SECONDS,
                limit=self._max_active,
            )

    def _finish(self, op_id: str, state: OperationState, **changes: Any) -> None:
        self._update(op_id, state=state, finished=datetime.now(UTC), **changes)
        with self._lock:
            wakers = self._wakers.pop(op_id, [])
        self._done[op_id].set()
        for wake in wakers:
            wake()

    def _publish(self, op: Operation) -> None:
        self._events.publish("operation", op.model_dump(mode="json"))

    def _forget_old(self) -> None:
        finished = [o for o in self._ops.values() if o.state in FINISHED]
        for op in sorted(finished, key=lambda o: o.created)[
            : max(0, len(finished) - KEEP_FINISHED)
        ]:
            del self._ops[op.id]
            self._done.pop(op.id, None)
            self._wakers.pop(op.id, None)
            self._cancel.discard(op.id)

    def get(self, op_id: str) -> Operation:
        with self._lock:
            op = self._ops.get(op_id)
            if op is None:
                raise NotFound(f"operation '{op_id}' not found", operation=op_id)
            return op.model_copy()

    def list(self) -> OperationList:
        with self._lock:
            ops = [o.model_copy() for o in self._ops.values()]
        return OperationList(operations=ops, count=len(ops))

    def wait(self, op_id: str, timeout: float) -> Operation:
        self.get(op_id)
        self._done[op_id].wait(timeout)
        return self.get(op_id)

    async def wait_async(self, op_id: str, timeout: float) -> Operation:
        """``wait`` for an event loop: no thread is held, the loop is woken at the end."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_resolve, ended)

        with self._lock:
            op = self._ops.get(op_id)
            if op is None:
                raise NotFound(f"operation '{op_id}' not found", operation=op_id)
            if op.state in FINISHED:
                return op.model_copy()
            self._wakers.setdefault(op_id, []).append(wake)
        try:
            await asyncio.wait({ended}, timeout=timeout)
        finally:
            with self._lock:
                waiting = self._wakers.get(op_id, [])
                if wake in waiting:
                    waiting.remove(wake)
        return self.get(op_id)

    def cancel(self, op_id: str) -> Operation:
        op = self.get(op_id)
        if op.state in FINISHED:
            raise Conflict(f"operation '{op_id}' already {op.state.value}", operation=op_id)
        self._cancel.add(op_id)
        return op

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
