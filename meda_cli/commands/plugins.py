"""``meda plugins``: installed plugins, their backends and why any cannot work."""

from __future__ import annotations

import typer

from meda_cli.context import handles_errors, meda
from meda_cli.output import JsonOption, emit_json, table


@handles_errors
def plugins(as_json: bool = JsonOption) -> None:
    """List plugins and backends."""
    report = meda().plugin_report()
    if as_json:
        emit_json(report)
        return
    table(
        ("plugin", "version", "backends", "error"),
        [(p.name, p.version, ", ".join(p.backends), p.error) for p in report.plugins],
    )
    typer.echo("")
    table(
        ("role", "backend", "plugin", "selected", "available"),
        [
            (b.role, b.name, b.plugin, "*" if b.selected else "", b.reason or "yes")
            for b in report.backends
        ],
    )
