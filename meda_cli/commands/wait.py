"""``meda wait``: until a VM runs, stops, has an address, answers on a port or by its agent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from meda_cli.context import api, handles_errors
from meda_cli.output import JsonOption, render
from meda_core.inputs.choices import DEFAULT_WAIT_TIMEOUT, MAX_WAIT_TIMEOUT

if TYPE_CHECKING:
    from meda_core.models import VMInfo

app = typer.Typer()


@app.command()
@handles_errors
def wait(
    name: str,
    conditions: list[str] = typer.Option(
        ...,
        "--for",
        metavar="CONDITION",
        help="running, stopped, ip, port:N or agent (repeat: all must hold together)",
    ),
    timeout: float = typer.Option(
        DEFAULT_WAIT_TIMEOUT,
        "--timeout",
        min=0,
        max=MAX_WAIT_TIMEOUT,
        metavar="SECONDS",
        help="Give up after this long (0: look once)",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Wait until every --for holds, then print the VM; exit 124 at --timeout.

    ip, port:N and agent wait for a stopped VM to be started; port:N holds once a TCP
    connection to the guest's port N gets through (22: once SSH says its banner)."""
    render(api().wait_vm(name, conditions, timeout), as_json, _line)


def _line(info: VMInfo) -> None:
    typer.echo(f"{info.name} {info.state.value} {info.ip or '-'}")
