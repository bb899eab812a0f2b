"""``meda logs NAME`` and ``meda console NAME``: a VM's serial console, here or from a server."""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from meda_cli.context import api, handles_errors
from meda_cli.output import visible
from meda_core.inputs.choices import MAX_CONSOLE_LINES

app = typer.Typer()

TailOption = typer.Option(
    None,
    "--tail",
    "-n",
    min=0,
    max=MAX_CONSOLE_LINES,
    help=f"Only the last N lines (default: all that is kept, at most {MAX_CONSOLE_LINES})",
)


def _show(name: str, tail: int | None, follow: bool, shown: Callable[[str], str]) -> None:
    """Write the console's text to stdout as UTF-8 as it comes; Ctrl-C ends it quietly."""
    out = sys.stdout.buffer
    with api().console(name, tail=tail, follow=follow) as feed:
        try:
            for chunk in feed:
                out.write(shown(chunk).encode("utf-8", "replace"))
                out.flush()
        except KeyboardInterrupt:
            pass


@app.command()
@handles_errors
def logs(
    name: str,
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Then print what the guest writes, until Ctrl-C"
    ),
    tail: int | None = TailOption,
    raw: bool = typer.Option(
        False,
        "--raw",
        help="Print the guest's escape sequences as they are (a hostile guest's could "
        "rewrite your terminal)",
    ),
) -> None:
    """Print a VM's serial console log, control characters made visible (like cat -v).

    The guest writes what it likes: its escape sequences are shown as ^[..., so that they
    cannot retitle, clear or rewrite your terminal; --raw prints them as they are.
    """
    _show(name, tail, follow, str if raw else visible)


@app.command()
@handles_errors
def console(name: str, tail: int | None = TailOption) -> None:
    """Follow a VM's serial console as the guest writes it, raw, until Ctrl-C.

    Raw: the guest's escape sequences reach your terminal, as on a serial terminal (meda
    logs shows them made visible). Ends when the VM is deleted.
    """
    _show(name, tail, True, str)
