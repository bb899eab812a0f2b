"""``meda plugins``: installed plugins, their backends and why any cannot work."""

from __future__ import annotations

import typer

from meda_cli.context import api, handles_errors
from meda_cli.output import JsonOption, render, table
from meda_core.models import PluginReport


@handles_errors
def plugins(as_json: bool = JsonOption) -> None:
    """List plugins and backends."""
    render(api().plugins(), as_json, _tables)


def _tables(report: PluginReport) -> None:
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
