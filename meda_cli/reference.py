"""The CLI reference (docs/cli.md), generated from ``--help``: ``python -m meda_cli.reference``."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.testing import CliRunner

from meda_cli.main import app
from meda_core.errors import MedaError

HEADER = """# CLI reference

Every `meda` command's `--help`. Generated — `python -m meda_cli.reference > docs/cli.md` —
and checked by the test suite, so it matches the code.
"""
#: Fixed terminal settings: the same text on every machine.
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "MEDA_URL": ""}


def command_paths() -> list[list[str]]:
    """``[]`` for ``meda`` itself, then every command and subcommand, sorted."""
    root = typer.main.get_command(app)
    paths: list[list[str]] = [[]]

    def walk(group: Any, prefix: list[str]) -> None:
        for name in sorted(group.commands):
            command = group.commands[name]
            if command.hidden:  # meda's own plumbing (the template builder), not for users
                continue
            paths.append([*prefix, name])
            if hasattr(command, "commands"):  # a group of its own (meda images)
                walk(command, [*prefix, name])

    walk(root, [])
    return paths


def _errors(cls: type[MedaError]) -> list[type[MedaError]]:
    """``cls`` and every error class below it, parents first."""
    return [cls, *(c for sub in cls.__subclasses__() for c in _errors(sub))]


#: What each exit code tells a script; the classes behind it come from the hierarchy.
MEANINGS = {
    1: "an unexpected error (a bug, or a plugin that failed)",
    2: "a bad request or usage: a name, size, option or file meda refuses; nothing changed",
    3: "not found: no such VM, image or operation",
    4: "a conflict: a name taken, a VM in another state, an operation under way, a port in use",
    5: "unavailable: no backend can do it here, no room now, or a guest that does not answer",
    6: "a backend tried and failed (hypervisor, tool, registry)",
    7: "refused: a missing or wrong token, or a web page's request",
    8: "rate limited: retry after `details.retry_after` seconds",
    9: "MEDA_HOME was written by a newer meda",
    10: "the guest has no agent that answers (exec, files): use an image that ships one",
    124: "a timeout: a command run through the guest's agent outlived it and was killed, "
    "or what `meda wait` waited for did not come",
}


def exit_codes() -> str:
    """The exit codes, from the one error hierarchy (meda_core/errors.py)."""
    found: dict[int, list[type[MedaError]]] = {}
    for cls in _errors(MedaError):
        found.setdefault(cls.exit_code, []).append(cls)
    rows = ["| exit | meaning | error codes |", "| --- | --- | --- |", "| 0 | success | |"]
    for code, classes in sorted(found.items()):
        meaning = MEANINGS.get(code) or (classes[0].__doc__ or "").strip().splitlines()[0]
        codes = ", ".join(dict.fromkeys(f"`{c.code}`" for c in classes))
        rows.append(f"| {code} | {meaning} | {codes} |")
    return (
        "## Exit codes\n\nErrors go to stderr (with `--json`, as the API's error body "
        "`{error, code, details}`) and end the command with the exit code of their class; "
        "the API answers the same classes with their HTTP status.\n\n"
        + "\n".join(rows)
        + "\n\n`meda serve` exits 4 when its port is taken (before it recovers a VM or "
        "writes `MEDA_HOME/server.json`) and 2 for options or settings it refuses. `meda ssh "
        "NAME -- COMMAND` exits with the command's own status (ssh's 255 when it cannot "
        "connect), as ssh does; its own errors before connecting use the codes above. `meda exec "
        "NAME -- COMMAND` likewise exits with the command's status (128 + the signal that "
        "ended it); its own errors use the codes above.\n"
    )


def render() -> str:
    runner = CliRunner()
    sections = [HEADER, exit_codes()]
    for path in command_paths():
        result = runner.invoke(app, [*path, "--help"], env=ENV, prog_name="meda")
        title = " ".join(["meda", *path])
        text = "\n".join(line.rstrip() for line in result.stdout.strip("\n").splitlines())
        sections.append(f"## {title}\n\n```\n{text}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    sys.stdout.write(render())
