"""``/api/v1/operations`` (background work) and ``/api/v1/events`` (server-sent events).

Waits and streams hold no worker thread (they wait on the event loop) and are capped in
number (:class:`~meda_api.waits.HeldRequests`), so they cannot starve other requests.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from meda_api.deps import MedaDep
from meda_api.routers.vms import ERRORS
from meda_api.waits import HeldRequests, unless_disconnected
from meda_core.state.operations import Operation, OperationList

router = APIRouter(tags=["operations"])
KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 0.1
HELD_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    429: {
        **ERRORS[429],
        "description": "Too many requests, or waits and event streams open (MEDA_MAX_WAITS)",
    },
}


def _held(request: Request) -> HeldRequests:
    held: HeldRequests = request.app.state.held
    return held


@router.get("/operations", response_model=OperationList)
def list_operations(meda: MedaDep) -> OperationList:
    return meda.operations.list()


@router.get("/operations/{op_id}", response_model=Operation, responses=HELD_ERRORS)
async def get_operation(
    op_id: str,
    request: Request,
    meda: MedaDep,
    wait: Annotated[float, Query(ge=0, le=300, description="Seconds to wait for the end")] = 0,
) -> Operation:
    if not wait:
        return meda.operations.get(op_id)
    release = _held(request).hold(request)
    try:
        op = await unless_disconnected(request, meda.operations.wait_async(op_id, wait))
    finally:
        release()
    return op if op is not None else meda.operations.get(op_id)  # the client left


@router.delete("/operations/{op_id}", response_model=Operation, responses=ERRORS)
def cancel_operation(op_id: str, meda: MedaDep) -> Operation:
    return meda.operations.cancel(op_id)


@router.get("/events", response_class=StreamingResponse, responses=HELD_ERRORS)
async def events(request: Request, meda: MedaDep) -> StreamingResponse:
    """VM lifecycle and operation events as ``text/event-stream``."""
    release = _held(request).hold(request)
    listener = meda.events.subscribe()

    def close() -> None:
        meda.events.unsubscribe(listener)
        release()

    return _HeldStream(_stream(request, listener), close)


async def _stream(request: Request, listener: queue.Queue[dict[str, Any]]) -> AsyncIterator[str]:
    yield ": meda events\n\n"
    idle = 0.0
    while not await request.is_disconnected():
        item = _next(listener)
        if item is None:
            await asyncio.sleep(POLL_SECONDS)
            idle += POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keepalive\n\n"
            continue
        idle = 0.0
        yield f"event: {item['event']}\ndata: {json.dumps(item['data'])}\n\n"


class _HeldStream(StreamingResponse):
    """An event stream that gives back what it holds however it ends, even unstarted."""

    def __init__(self, content: AsyncIterator[str], close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()


def _next(listener: queue.Queue[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return listener.get_nowait()
    except queue.Empty:
        return None
