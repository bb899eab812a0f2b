"""``Prefer: respond-async``: long work as a background operation (202 + Location)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from meda_core.facade import Meda
from meda_core.state.operations import Operation, Work

PreferHeader = Annotated[
    str | None,
    Header(description="`respond-async` runs the work in the background: 202 and a Location"),
]
ASYNC_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Operation, "description": "Accepted: follow the Location header"},
}


def run_or_accept(
    prefer: str | None, meda: Meda, kind: str, work: Work
) -> BaseModel | JSONResponse:
    """Do ``work`` now, or, when the client prefers, start it and answer 202."""
    if prefer is None or "respond-async" not in prefer.lower():
        return work(lambda done, total: None)
    op = meda.operations.submit(kind, work)
    return JSONResponse(
        op.model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/api/v1/operations/{op.id}", "Preference-Applied": "respond-async"},
    )
