from __future__ import annotations

import threading

import pytest
from pydantic import BaseModel

from meda_core.backends import Progress
from meda_core.errors import Conflict, InvalidRequest, NotFound
from meda_core.eventbus import EventBus
from meda_core.operations import Operations, OperationState


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
