"""The options create, run and clone share: labels and lifecycle policies."""

from __future__ import annotations

from typing import Any

import typer

from meda_core.errors import InvalidRequest

LabelOption: Any = typer.Option(
    None, "--label", "-l", help="A label KEY=VALUE (repeat for more)", show_default=False
)
TtlOption: Any = typer.Option(
    None, "--ttl", help="Seconds until the VM is deleted (meda ttl extends it)", min=1
)
RestartOption: Any = typer.Option(
    "no", "--restart", help="no, on-failure or always: start it again when it ends (backoff)"
)


def labels_of(given: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict (the request model checks keys and values)."""
    labels: dict[str, str] = {}
    for text in given or []:
        key, sign, value = text.partition("=")
        if not sign:
            raise InvalidRequest(f"label {text!r}: give KEY=VALUE", label=text)
        labels[key] = value
    return labels


def policy_fields(labels: list[str] | None, ttl: int | None, restart: str) -> dict[str, Any]:
    """The request fields of these options."""
    return {"labels": labels_of(labels), "ttl": ttl, "restart": restart}
