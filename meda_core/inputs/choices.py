"""The fixed choices and limits of what users send, free of pydantic: the CLI builds its
options from them without importing the models."""

from __future__ import annotations

from enum import StrEnum

#: The most seconds a stop or delete may give a guest to power off on ACPI.
MAX_STOP_TIMEOUT = 3600.0


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
