"""Typed lifecycle events broadcast to observer plugins through ``meda_vm_event``."""

from __future__ import annotations

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


class VMEvent(BaseModel):
    kind: VMEventKind
    vm: str
    state: VMState | None
    message: str | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
