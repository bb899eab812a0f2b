"""``meda images import|list``: the local image store."""

from __future__ import annotations

from pathlib import Path

import typer

from meda_cli.context import handles_errors, meda
from meda_cli.output import JsonOption, render, table
from meda_core.models import ImageList
from meda_core.views import image_info, image_list

app = typer.Typer(help="Manage images in the local store.")


@app.command("import")
@handles_errors
def import_(
    ref: str = typer.Argument(..., metavar="NAME[:TAG]"),
    disk: Path | None = typer.Option(None, help="Base disk (qcow2 or raw)"),
    kernel: Path | None = typer.Option(None, help="Kernel for direct boot"),
    initrd: Path | None = typer.Option(None, help="Initrd for direct boot"),
    cmdline: str | None = typer.Option(None, help="Default kernel command line"),
    as_json: bool = JsonOption,
) -> None:
    """Import local files as an image."""
    image = meda().images.import_files(ref, disk, kernel, initrd, cmdline)
    render(image_info(image), as_json, lambda i: typer.echo(f"Imported image {i.name}:{i.tag}"))


@app.command("list")
@handles_errors
def list_(as_json: bool = JsonOption) -> None:
    """List images."""
    render(image_list(meda().images.list()), as_json, _table)


def _table(result: ImageList) -> None:
    rows = [(i.name, i.tag, i.size, i.disk, i.kernel, i.created.isoformat()) for i in result.images]
    table(("name", "tag", "size", "disk", "kernel", "created"), rows)
