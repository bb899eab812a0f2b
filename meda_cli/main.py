"""The ``meda`` command: every command group assembled."""

from __future__ import annotations

from pathlib import Path

import typer

from meda_cli import context
from meda_cli.commands import (
    console,
    events,
    guest,
    images,
    mcp,
    network,
    plugins,
    serve,
    ssh,
    vms,
    wait,
)
from meda_cli.output import fail
from meda_core.errors import MedaError
from meda_core.host.private import restrict_process

app = typer.Typer(
    name="meda",
    help="Micro-VMs on this host: a REST API and a CLI, every backend a plugin.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help, as click writes it: Rich's would cost ~100 ms of every start.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from meda_core import __version__  # importlib.metadata: only when asked

        typer.echo(f"meda {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    url: str | None = typer.Option(
        None,
        "--url",
        envvar="MEDA_URL",
        help="A meda server to send commands to: http(s)://HOST:PORT or unix:///PATH "
        "(else this host)",
    ),
    token_file: Path | None = typer.Option(
        None,
        "--token-file",
        envvar="MEDA_API_TOKEN_FILE",
        help="File holding the server's bearer token (or set MEDA_API_TOKEN)",
    ),
    ca_file: Path | None = typer.Option(
        None,
        "--ca-file",
        envvar="MEDA_CA_FILE",
        help="CA certificate to check an HTTPS server with (else the system's)",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print meda's version"
    ),
) -> None:
    """Micro-VMs on this host: a REST API and a CLI, every backend a plugin."""
    restrict_process()
    token = token_file.read_text().strip() if token_file is not None else None
    try:
        context.use_server(url, token, str(ca_file) if ca_file else None)
    except MedaError as error:
        fail(error, False)


app.registered_commands += vms.app.registered_commands
app.registered_commands += network.app.registered_commands
app.registered_commands += images.commands.registered_commands
app.registered_commands += ssh.app.registered_commands
app.registered_commands += console.app.registered_commands
app.registered_commands += guest.app.registered_commands
app.registered_commands += events.app.registered_commands
app.registered_commands += wait.app.registered_commands
app.command("serve")(serve.serve)
app.command("plugins")(plugins.plugins)
app.command("mcp")(mcp.mcp)
app.add_typer(images.app, name="images")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
