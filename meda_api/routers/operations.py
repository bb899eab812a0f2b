"""``/api/v1/operations`` (background work) and ``/api/v1/events`` (server-sent events)."""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from meda_api.deps import MedaDep
from meda_api.routers.vms import ERRORS
from meda_core.operations import Operation, OperationList

router = APIRouter(tags=["operations"])
KEEPALIVE_SECONDS = 15.0


@router.get("/operations", response_model=OperationList)
def list_operations(meda: MedaDep) -> OperationList:
    return meda.operations.list()


@router.get("/operations/{op_id}", response_model=Operation, responses=ERRORS)
async def get_operation(
    op_id: str,
    meda: MedaDep,
    wait: Annotated[float, Query(ge=0, le=300, description="Seconds to wait for the end")] = 0,
) -> Operation:
    if wait:
        return await run_in_threadpool(meda.operations.wait, op_id, wait)
    return meda.operations.get(op_id)


@router.delete("/operations/{op_id}", response_model=Operation, responses=ERRORS)
def cancel_operation(op_id: str, meda: MedaDep) -> Operation:
    return meda.operations.cancel(op_id)


@router.get("/events", response_class=StreamingResponse)
async def events(request: Request, meda: MedaDep) -> StreamingResponse:
    """VM lifecycle and operation events as ``text/event-stream``."""
    listener = meda.events.subscribe()

    async def stream() -> AsyncIterator[str]:
        try:
            yield ": meda events\n\n"
            idle = 0.0
            while not await request.is_disconnected():
                item = _next(listener)
                if item is None:
                    await asyncio.sleep(0.1)
                    idle += 0.1
                    if idle >= KEEPALIVE_SECONDS:
                        idle = 0.0
                        yield ": keepalive\n\n"
                    continue
                idle = 0.0
                yield f"event: {item['event']}\ndata: {json.dumps(item['data'])}\n\n"
        finally:
            meda.events.unsubscribe(listener)

    return StreamingResponse(stream(), media_type="text/event-stream")


def _next(listener: queue.Queue[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return listener.get_nowait()
    except queue.Empty:
        return None
