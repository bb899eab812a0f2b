"""The fixed choices and limits of what users send, free of pydantic: the CLI builds its
options from them without importing the models."""

from __future__ import annotations

from enum import StrEnum

#: The most seconds a stop or delete may give a guest to power off on ACPI.
MAX_STOP_TIMEOUT = 3600.0
#: The most lines one read of a console log gives (it is capped in bytes too).
MAX_CONSOLE_LINES = 10_000
#: The most seconds a command run through a guest's agent may ask for.
MAX_EXEC_TIMEOUT = 86400.0
#: The most bytes a command's argv and environment may take together (Linux's own limit
#: for one argument is 128 KiB; a guest's total is larger, its agent's frames smaller).
MAX_EXEC_ARGS_BYTES = 256 * 1024
#: The most seconds one wait for a VM (``GET /vms/{name}/wait``) may last, and its default.
MAX_WAIT_TIMEOUT = 3600.0
DEFAULT_WAIT_TIMEOUT = 60.0
#: The most conditions (``for=``) one wait may name.
MAX_WAIT_CONDITIONS = 16


class EventFormat(StrEnum):
    """How ``GET /events`` answers: a stream, or a page of the journal."""

    SSE = "sse"
    JSON = "json"


class Archive(StrEnum):
    """How a directory travels through the files endpoint."""

    TAR = "tar"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
