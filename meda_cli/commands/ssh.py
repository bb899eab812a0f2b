"""``meda ssh NAME [-- CMD…]``: the system ssh client with meda's managed key."""

from __future__ import annotations

import os

import typer

from meda_cli.context import handles_errors, meda
from meda_core.ssh import ssh_argv

app = typer.Typer()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handles_errors
def ssh(ctx: typer.Context, name: str) -> None:
    """Open a shell in a VM as user meda, or run CMD (after --) there."""
    instance = meda()
    argv = ssh_argv(
        instance.vms.get(name), instance.settings.home, ctx.args, instance.settings.netns
    )
    os.execvp(argv[0], argv)
