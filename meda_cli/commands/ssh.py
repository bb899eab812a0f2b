"""``meda ssh NAME [-- CMD…]``: the system ssh client with meda's managed key."""

from __future__ import annotations

import os

import typer

from meda_cli.context import handles_errors, meda, netns_origin

app = typer.Typer()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handles_errors
def ssh(
    ctx: typer.Context,
    name: str,
    wait: float = typer.Option(
        0, "--wait", min=0, help="Seconds to wait for the guest's SSH server (a booting VM)"
    ),
) -> None:
    """Open a shell in a VM as user meda, or run CMD (after --) there."""
    from meda_core.vms.ssh import SSH_PORT, check_reachable, ssh_argv

    instance = meda()
    vm, settings = instance.vms.get(name), instance.settings
    endpoint = instance.network.guest_endpoint(vm.name, SSH_PORT)
    argv = ssh_argv(vm, endpoint, settings.home, ctx.args, settings.netns)
    check_reachable(vm, endpoint, settings.netns, netns_origin(settings), wait)
    os.execvp(argv[0], argv)
