"""Typed lifecycle events broadcast to observer plugins through ``meda_vm_event``, and why
each happened."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from meda_core.models import VMState


class VMEventKind(StrEnum):
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    DELETED = "deleted"
    FAILED = "failed"
    RESTARTING = "restarting"
    EXPIRED = "expired"


class EventReason(StrEnum):
    """Why an event happened."""

    REQUEST = "request"  # a client asked (the request id says which request)
    POLICY = "policy"  # a lifecycle policy fired: a ttl expired, a restart policy
    FAILURE = "failure"  # something failed: the hypervisor died, a start failed
    GUEST = "guest"  # the guest did it: it powered itself off
    RECOVERY = "recovery"  # meda settled what a crash of its own left behind


#: The id of the API request being served (set by the API's middleware), for events and logs.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
#: Why the work under way happens, when it is not a request.
_reason: ContextVar[EventReason] = ContextVar("reason", default=EventReason.REQUEST)


@contextlib.contextmanager
def because(reason: EventReason) -> Iterator[None]:
    """Events emitted inside happen for ``reason`` (a policy's work, a recovery)."""
    token = _reason.set(reason)
    try:
        yield
    finally:
        _reason.reset(token)


def current_reason() -> EventReason:
    return _reason.get()


class VMEvent(BaseModel):
    kind: VMEventKind
    vm: str
    state: VMState | None
    message: str | None = None
    reason: EventReason = Field(default_factory=current_reason)
    request_id: str | None = Field(default_factory=lambda: request_id.get())
    labels: dict[str, str] = Field(default_factory=dict)
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
