"""pydantic's validation errors in meda's words: the one text the API and the CLI give."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meda_core.inputs.names import RULES


def problem(error: Mapping[str, Any]) -> tuple[str, str, bool]:
    """``(field, problem, friendly)`` for one of pydantic's errors; a name that misses its
    pattern is said as the check of a name says it."""
    field = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    pattern = (error.get("ctx") or {}).get("pattern")
    if error.get("type") == "string_pattern_mismatch" and pattern in RULES:
        what, rule = RULES[pattern]
        return field, f"invalid {what} '{str(error.get('input'))[:100]}': {rule}", True
    return field, str(error.get("msg", "invalid")), False


def describe(errors: Iterable[Mapping[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    """The message for a request that failed validation, and its problems field by field."""
    found = [problem(error) for error in errors]
    texts = [text if friendly else f"{field}: {text}" for field, text, friendly in found]
    message = "; ".join(texts)
    if not found or not found[0][2]:
        message = f"invalid request: {message}"
    return message, [{"field": field, "problem": text} for field, text, _ in found]
