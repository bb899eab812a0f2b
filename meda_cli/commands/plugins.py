"""``meda plugins``: installed plugins, their backends and why any cannot work."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from meda_cli.context import api, handles_errors
from meda_cli.output import JsonOption, render, table

if TYPE_CHECKING:
    from meda_core.models import PluginReport


@handles_errors
def plugins(as_json: bool = JsonOption) -> None:
    """List plugins and backends."""
    render(api().plugins(), as_json, _tables)


def _tables(report: PluginReport) -> None:
    rows = [
        (p.name, p.distribution, p.version, ", ".join(p.backends), ", ".join(p.hooks), p.error)
        for p in report.plugins
    ]
    table(("plugin", "distribution", "version", "backends", "hooks", "error"), rows)
    typer.echo("")
    table(
        ("role", "backend", "plugin", "selected", "available"),
        [
            (b.role, b.name, b.plugin, "*" if b.selected else "", b.reason or "yes")
            for b in report.backends
        ],
    )
