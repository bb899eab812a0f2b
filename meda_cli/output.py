"""Printing: the API's models as JSON with ``--json``, as tables for people otherwise."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from meda_core.errors import InvalidRequest, MedaError

if TYPE_CHECKING:  # pydantic is imported by the command that has a model to print
    from pydantic import BaseModel

JsonOption = typer.Option(False, "--json", help="Print the result as JSON (the API's model)")
UserDataOption = typer.Option(
    None, "--user-data", help="cloud-config or script FILE, read here and sent as content"
)


def read_user_data(path: Path | None) -> str | None:
    """The content of a --user-data file (read on the client side, never by the server)."""
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"cannot read user data file {path}: {exc.strerror}") from None


M = TypeVar("M", bound="BaseModel")


def render(model: M, as_json: bool, human: Callable[[M], None]) -> None:
    """Print ``model`` as the API's JSON with ``--json``, else the way ``human`` does."""
    if as_json:
        typer.echo(model.model_dump_json(indent=2))
    else:
        human(model)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h).upper() for h in headers]] + [
        ["-" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def fields(pairs: Sequence[tuple[str, object]], indent: int = 0) -> None:
    """Print ``label: value`` lines for people: nested models and mappings indented below
    their label, lists one item a line, times to the second, nothing as ``-``."""
    from pydantic import BaseModel

    width = max((len(label) for label, _ in pairs), default=0) + 2
    pad = " " * indent
    for label, value in pairs:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, Mapping) and value:
            typer.echo(f"{pad}{label}:")
            fields([(str(k), v) for k, v in value.items()], indent + 2)
        elif isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            typer.echo(f"{pad}{label}:")
            for item in value:
                typer.echo(f"{pad}  - {plain(item)}")
        else:
            typer.echo(f"{pad}{label + ':':<{width}}{plain(value)}")


def plain(value: object) -> str:
    """``value`` as the CLI shows it in a table or a line."""
    from pydantic import BaseModel

    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items())
    return str(value)


def _caret(code: int) -> str:
    """``cat -v``'s form of a control character: ^X for C0 and DEL, M-^X for C1."""
    if code >= 0x80:
        return "M-" + _caret(code - 0x80)
    return "^?" if code == 0x7F else "^" + chr(code + 0x40)


#: Control characters a terminal acts on, made visible; tab and newline stay.
_VISIBLE = {
    code: _caret(code) for code in [*range(0x20), *range(0x7F, 0xA0)] if chr(code) not in "\t\n"
}


def visible(text: str) -> str:
    """``text`` with the control characters a terminal would act on (escape sequences
    first of all) shown as ``cat -v`` shows them; a serial line's CR LF is a newline."""
    return text.replace("\r\n", "\n").translate(_VISIBLE)


def fail(error: MedaError, as_json: bool) -> None:
    """Report ``error`` on stderr and exit with its exit code; its control characters are
    made visible (a message may quote a guest's text: a guest must not drive the terminal)."""
    if as_json:
        print(json.dumps(error.to_body(), indent=2), file=sys.stderr)
    else:
        print(f"error: {visible(error.message)}", file=sys.stderr)
    raise typer.Exit(error.exit_code)
