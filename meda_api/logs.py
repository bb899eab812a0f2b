"""The server's logs: one JSON object per line when not on a terminal, each with the
request id, and never a secret."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from meda_api.observability import request_id

#: Fields the access log adds to its records (``extra=``), copied into the JSON line.
EXTRA_FIELDS = ("method", "route", "status", "ms")
#: Variables whose values are secrets, wherever they would show up.
SECRET_VARIABLES = ("MEDA_API_TOKEN", "MEDA_REGISTRY_PASSWORD", "MEDA_REGISTRY_TOKEN")
REDACTED = "[redacted]"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        line.update({k: getattr(record, k) for k in EXTRA_FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = request_id.get()
        prefix = f"{record.levelname:<8} {record.name}"
        text = (
            f"{prefix} [{rid}] {record.getMessage()}" if rid else f"{prefix} {record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class Redact(logging.Filter):
    """Replace every known secret in a record's final text."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(secret in text for secret in self.secrets):
            for secret in self.secrets:
                text = text.replace(secret, REDACTED)
            record.msg, record.args = text, None
        return True


def level_from_environment() -> str:
    """``MEDA_LOG_LEVEL``, else ``MEDA_LOG`` or the seed's ``RUST_LOG`` (``info``,
    ``meda=debug,hyper=warn``: the level for meda, else the default one), else info."""
    if os.environ.get("MEDA_LOG_LEVEL"):
        return _level(os.environ["MEDA_LOG_LEVEL"]) or "INFO"
    for variable in ("MEDA_LOG", "RUST_LOG"):
        found = _directive_level(os.environ.get(variable, ""))
        if found:
            return found
    return "INFO"


def _directive_level(value: str) -> str | None:
    """The level a ``RUST_LOG``-style value gives meda: its ``meda…=LEVEL``, else its bare
    ``LEVEL``; None if neither."""
    default = None
    for directive in value.split(","):
        target, _, level = directive.strip().rpartition("=")
        if _level(level) not in _LEVELS:
            continue  # another program's word, or no level at all
        if target.startswith("meda"):
            return _level(level)
        if not target:
            default = _level(level)
    return default


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def _level(name: str) -> str:
    name = name.strip().upper()
    return {"TRACE": "DEBUG", "WARN": "WARNING", "OFF": "CRITICAL"}.get(name, name)


def configure(
    level: str | None = None,
    json_lines: bool | None = None,
    secrets: list[str] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every logger's records (meda's and uvicorn's) through one handler."""
    stream = stream or sys.stderr
    if json_lines is None:
        wanted = os.environ.get("MEDA_LOG_FORMAT", "auto")
        json_lines = wanted == "json" or (wanted == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    known = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    handler.addFilter(Redact([*known, *(secrets or [])]))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or level_from_environment())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return handler
