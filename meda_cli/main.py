"""The ``meda`` command: every command group assembled."""

from __future__ import annotations

import typer

from meda_cli.commands import images, network, plugins, serve, ssh, vms

app = typer.Typer(
    name="meda",
    help="Micro-VMs on this host: a REST API and a CLI, every backend a plugin.",
    no_args_is_help=True,
    add_completion=False,
)
app.registered_commands += vms.app.registered_commands
app.registered_commands += network.app.registered_commands
app.registered_commands += images.commands.registered_commands
app.registered_commands += ssh.app.registered_commands
app.command("serve")(serve.serve)
app.command("plugins")(plugins.plugins)
app.add_typer(images.app, name="images")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
