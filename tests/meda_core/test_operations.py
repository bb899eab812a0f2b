from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from meda_core.errors import Conflict, InsufficientCapacity, InvalidRequest, NotFound
from meda_core.state.eventbus import EventBus
from meda_core.state.operations import Operation, Operations, OperationState, Progress, Work


class Done(BaseModel):
    value: int


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def ops(bus: EventBus) -> Operations:
    return Operations(bus)


def test_success_reports_bytes_result_and_events(ops: Operations, bus: EventBus) -> None:
    listener = bus.subscribe()

    def work(progress: Progress) -> Done:
        progress(50, 100)
        progress(100, 100)
        return Done(value=7)

    op = ops.submit("pull", work)
    finished = ops.wait(op.id, 10)
    assert finished.state == OperationState.SUCCEEDED
    assert (finished.bytes_done, finished.bytes_total) == (100, 100)
    assert finished.result == {"value": 7} and finished.finished is not None
    states = [listener.get_nowait()["data"]["state"] for _ in range(listener.qsize())]
    assert states[0] == "pending" and states[-1] == "succeeded"


def test_failure_keeps_the_error_body(ops: Operations) -> None:
    def work(progress: Progress) -> Done:
        raise InvalidRequest("bad input")

    op = ops.wait(ops.submit("push", work).id, 10)
    assert op.state == OperationState.FAILED
    assert op.error is not None and op.error["code"] == "INVALID_REQUEST"


def test_cancel_stops_at_the_next_progress_report(ops: Operations) -> None:
    started = threading.Event()

    def work(progress: Progress) -> Done:
        started.set()
        for done in range(10_000):
            progress(done, 10_000)
            threading.Event().wait(0.01)
        return Done(value=1)

    op = ops.submit("pull", work)
    started.wait(5)
    ops.cancel(op.id)
    finished = ops.wait(op.id, 10)
    assert finished.state == OperationState.CANCELLED
    with pytest.raises(Conflict):
        ops.cancel(op.id)


def test_unknown_operation(ops: Operations) -> None:
    with pytest.raises(NotFound):
        ops.get("nope")


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Work that waits for this gate runs until the test opens it."""
    opened = threading.Event()
    yield opened
    opened.set()


def _gated(gate: threading.Event) -> Work:
    def work(progress: Progress) -> Done:
        gate.wait(30)
        return Done(value=1)

    return work


def test_the_queue_is_bounded_and_a_refusal_creates_nothing(
    bus: EventBus, gate: threading.Event
) -> None:
    ops = Operations(bus, workers=1, max_active=3)
    held = [ops.submit("pull", _gated(gate)) for _ in range(3)]  # one runs, two queue
    listener = bus.subscribe()
    with pytest.raises(InsufficientCapacity) as refused:
        ops.submit("pull", _gated(gate))
    assert refused.value.details["retry_after"] > 0 and refused.value.http_status == 503
    assert ops.list().count == 3 and listener.empty()  # no operation, no event
    gate.set()
    for op in held:
        assert ops.wait(op.id, 10).state == OperationState.SUCCEEDED
    assert ops.wait(ops.submit("pull", _gated(gate)).id, 10).state == OperationState.SUCCEEDED


def test_an_async_wait_is_woken_by_the_end_and_holds_no_thread(
    ops: Operations, gate: threading.Event
) -> None:
    op = ops.submit("pull", _gated(gate))

    async def wait_for_many() -> list[Operation]:
        threads = threading.active_count()
        waits = [asyncio.ensure_future(ops.wait_async(op.id, 30)) for _ in range(200)]
        await asyncio.sleep(0.2)
        assert threading.active_count() <= threads and not any(w.done() for w in waits)
        threading.Timer(0.2, gate.set).start()
        return await asyncio.gather(*waits)

    started = time.monotonic()
    ended = asyncio.run(wait_for_many())
    assert time.monotonic() - started < 5  # woken, not timed out
    assert {o.state for o in ended} == {OperationState.SUCCEEDED}
    assert ops._wakers == {}  # nothing left behind


def test_an_async_wait_times_out_and_leaves_nothing_behind(
    ops: Operations, gate: threading.Event
) -> None:
    op = ops.submit("pull", _gated(gate))
    assert asyncio.run(ops.wait_async(op.id, 0.1)).state == OperationState.RUNNING
    assert ops._wakers == {op.id: []}
    with pytest.raises(NotFound):
        asyncio.run(ops.wait_async("nope", 1))
