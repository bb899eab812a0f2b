"""``meda ip``, ``meda port-forward`` and ``meda cleanup``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from meda_cli.context import api, handles_errors
from meda_cli.output import JsonOption, render, table
from meda_cli.validation import build
from meda_core.errors import InvalidRequest
from meda_core.inputs.choices import Protocol

if TYPE_CHECKING:  # the models are imported by the commands that use them, not by --help
    from meda_core.models import CleanupReport, PortForwardList

app = typer.Typer()


@app.command()
@handles_errors
def ip(name: str, as_json: bool = JsonOption) -> None:
    """Print a VM's IP address."""
    render(api().vm_ip(name), as_json, lambda a: typer.echo(a.ip or "-"))


@app.command("port-forward")
@handles_errors
def port_forward(
    name: str,
    host_port: int | None = typer.Argument(None, help="Port on the host"),
    guest_port: int | None = typer.Argument(None, help="Port in the guest"),
    protocol: Protocol = typer.Option(Protocol.TCP, help="tcp or udp"),
    list_: bool = typer.Option(False, "--list", help="List the VM's forwards"),
    remove: bool = typer.Option(False, "--remove", help="Remove the forward of HOST_PORT"),
    as_json: bool = JsonOption,
) -> None:
    """Forward HOST_PORT to the VM's GUEST_PORT; or --list, or HOST_PORT --remove."""
    from meda_core.models import PortForward

    if list_ or host_port is None:
        render(api().list_forwards(name), as_json, _forward_table)
        return
    if remove:
        result = api().remove_forward(name, host_port, protocol)
    else:
        if guest_port is None:
            raise InvalidRequest("give GUEST_PORT, or --remove or --list")
        forward = build(PortForward, host_port=host_port, guest_port=guest_port, protocol=protocol)
        result = api().add_forward(name, forward)
    render(result, as_json, lambda r: typer.echo(r.message))


def _forward_table(result: PortForwardList) -> None:
    rows = [
        (f.host_port, f.guest_port, f.protocol.value, f.address, f.netns or "-")
        for f in result.forwards
    ]
    table(("host port", "guest port", "protocol", "address", "namespace"), rows)


@app.command()
@handles_errors
def cleanup(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed"),
    as_json: bool = JsonOption,
) -> None:
    """Find and remove network resources no VM owns (taps, leases, rules, dnsmasq)."""
    render(api().cleanup_network(dry_run), as_json, _cleanup_text)


def _cleanup_text(report: CleanupReport) -> None:
    if report.message:
        typer.echo(report.message)
    verb = "would remove" if report.dry_run else "removed"
    for orphan in report.orphans:
        typer.echo(f"{verb}: {orphan}")
    typer.echo(f"{report.count} orphan(s) {'found' if report.dry_run else 'removed'}")
