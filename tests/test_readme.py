"""The README runs as written: every ``meda …`` command line in it parses against the real
CLI (its subcommands exist, its options are known, its arguments are enough), and every
``MEDA_*`` it names is a documented setting."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from meda_cli.main import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: What ends a command in a shell line (redirections too: what follows is no argument).
_OPERATORS = "&|;<>()"
_PLACEHOLDER = re.compile(r"\[|\||…|\b[A-Z][A-Z_:]{2,}\b")


def _code_lines() -> list[str]:
    """Lines of the README's shell code — ```bash blocks, indented command lines — and
    ``meda …`` code spans that are whole commands (arguments, and no NAME, [optional] or
    a|b placeholders)."""
    lines, shell = [], None
    for line in README.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            shell = None if shell is not None else fence[3:] in ("bash", "sh", "console")
        elif shell or (shell is None and re.match(r" {4}\S.*\bmeda [a-z-]", line)):
            lines.append(line)
    for span in re.findall(r"`(meda [^`]+)`", README):
        if len(span.split()) > 2 and not _PLACEHOLDER.search(span):  # a command, not a name
            lines.append(span)
    return lines


def _words(line: str) -> list[str]:
    """A shell line's words, with ``&&``, ``;``, ``|``… as words of their own; no comment."""
    lexer = shlex.shlex(re.sub(r"\$\([^)]*\)", "X", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def meda_commands() -> list[list[str]]:
    """Every ``meda`` invocation (its arguments) in the README's code."""
    found = []
    for line in _code_lines():
        command: list[str] = []
        for word in [*_words(line), ";"]:
            if word and set(word) <= set(_OPERATORS):
                while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
                    command.pop(0)  # VAR=value before the command
                if command and command[0] in ("meda", ".venv/bin/meda"):
                    found.append(command[1:])
                command = []
            else:
                command.append(word)
    return found


def parse(args: list[str]) -> None:
    """Parse ``meda ARGS`` as the CLI would, down to the last subcommand; run nothing."""
    command: click.Command = typer.main.get_command(app)
    name, parent = "meda", None
    while True:
        context = command.make_context(name, list(args), parent=parent)
        if not isinstance(command, click.Group):
            return
        rest = [*context._protected_args, *context.args]
        if not rest:
            return  # a group that works alone (meda images)
        found, sub, _ = command.resolve_command(context, rest)
        assert sub is not None and found is not None
        name, command, parent, args = found, sub, context, rest[1:]


COMMANDS = meda_commands()


def test_the_readme_has_commands() -> None:
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_meda_command_in_the_readme_parses(args: list[str]) -> None:
    if args in (["--version"], ["--help"]):
        return  # eager options: they print and exit
    try:
        parse(args)
    except click.ClickException as error:
        pytest.fail(f"`meda {shlex.join(args)}` in README.md: {error.format_message()}")


def test_every_setting_the_readme_names_is_documented() -> None:
    documented = set(
        re.findall(r"`(MEDA_[A-Z0-9_]+)`", (ROOT / "docs/configuration.md").read_text())
    )
    named = set(re.findall(r"\bMEDA_[A-Z0-9_]+\b", README))
    assert named - documented == set()


def test_the_settings_have_one_table() -> None:
    """docs/configuration.md lists them; the README points there instead of a copy."""
    rows = [line for line in README.splitlines() if line.startswith("| `MEDA_")]
    assert rows == [], rows
    assert "docs/configuration.md" in README


def test_meda_is_on_path_before_the_readme_uses_it() -> None:
    """After the set-up, `meda` is .venv/bin/meda: the README puts it on PATH first."""
    install = README.split("## Install and use", 1)[1].split("```bash", 1)[1].split("```")[0]
    lines = [line.split("#")[0].strip() for line in install.splitlines()]
    first = next(i for i, line in enumerate(lines) if line.startswith("meda "))
    on_path = {"export PATH=$PWD/.venv/bin:$PATH", ". .venv/bin/activate"}
    assert on_path & set(lines[:first]), lines[: first + 1]
    assert any(line == "bash scripts/setup.sh" for line in lines[:first])
    assert ".venv/bin/pip install" in (ROOT / "scripts" / "setup.sh").read_text()
