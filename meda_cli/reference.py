"""The CLI reference (docs/cli.md), generated from ``--help``: ``python -m meda_cli.reference``."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.testing import CliRunner

from meda_cli.main import app

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


def render() -> str:
    runner = CliRunner()
    sections = [HEADER]
    for path in command_paths():
        result = runner.invoke(app, [*path, "--help"], env=ENV, prog_name="meda")
        title = " ".join(["meda", *path])
        text = "\n".join(line.rstrip() for line in result.stdout.strip("\n").splitlines())
        sections.append(f"## {title}\n\n```\n{text}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    sys.stdout.write(render())
